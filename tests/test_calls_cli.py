"""`voicebridge calls`: what a shop owner sees of past calls (outcome, cost, transcript), from an SQLite
file or a PostgreSQL database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from voicebridge.cli import main
from voicebridge.ops.store import Store


def _seed(db: Path | str) -> None:
    async def go() -> None:
        store = await Store.open(db)
        start = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
        await store.call_started("CA" + "1" * 32, stream_sid="MZ" + "2" * 32, from_number="+15551230001",
                                 to_number="+15559870000", direction="inbound", started_at=start)
        await store.add_transcript("CA" + "1" * 32, role="assistant", text="Thanks for calling!", item_id="i1",
                                   at=start + timedelta(seconds=1))
        await store.add_transcript("CA" + "1" * 32, role="caller", text="A large pepperoni, please.", item_id="i2",
                                   at=start + timedelta(seconds=4))
        await store.call_ended("CA" + "1" * 32, outcome="completed", ended_at=start + timedelta(seconds=95),
                               cost_usd=Decimal("0.094922"), cost_details={"tokens": {"audio_out": 523}})
        await store.aclose()

    trio.run(go)


def test_calls_lists_outcome_length_and_cost(db_target: Path | str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The list shows each call's outcome, length and estimated cost."""
    db = db_target  # an SQLite file, or a postgresql:// URL: VOICEBRIDGE_DB takes either
    _seed(db)
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    assert main(["calls"]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "1:35" in out and "$0.0949" in out


def test_calls_show_prints_the_transcript_and_cost_breakdown(db_target: Path | str, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`calls show SID` prints both sides of the conversation and the tokens behind the cost."""
    db = db_target  # an SQLite file, or a postgresql:// URL: VOICEBRIDGE_DB takes either
    _seed(db)
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    assert main(["calls", "show", "CA" + "1" * 32]) == 0
    out = capsys.readouterr().out
    assert "caller: A large pepperoni, please." in out and "AI    : Thanks for calling!" in out
    assert "$0.094922" in out and "audio_out 523" in out
    assert main(["calls", "show", "CA" + "9" * 32]) == 1
