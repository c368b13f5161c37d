"""`voicebridge demo`: a whole call through the real daemon on loopback, printed as it happens."""

from __future__ import annotations

import io
from pathlib import Path

import trio

from voicebridge.config import Config
from voicebridge.peers.demo import run_demo_async
from voicebridge.peers.scenario import load_scenario


async def test_demo_prints_the_call_the_confirmed_order_and_its_delivery(tmp_path: Path) -> None:
    """The demo shows the barge-in, the read-back with the total, the saved order and the webhook delivery."""
    out = io.StringIO()
    with trio.fail_after(90):
        result = await run_demo_async(Config(db_path=tmp_path / "demo.sqlite3"), load_scenario("demo"), out=out)
    text = out.getvalue()
    assert result.outcome == "completed" and result.twilio_outcome == "hangup"
    assert "** barge-in: the caller talked over the AI" in text
    assert "total $32.94" in text
    assert "== order #1 saved: subtotal $30.50, tax $2.44, total $32.94" in text
    assert "webhook: webhook received order #1: 2 items, total $32.94" in text
    assert f"order #1 in {tmp_path / 'demo.sqlite3'}: total $32.94, webhook delivery: delivered" in text
    assert result.delivery_state == "delivered"
