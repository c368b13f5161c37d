"""A real daemon call whose caller transcripts arrive late, as the real API sends them: the stored
transcript still reads in speaking order. Loopback only, as in test_daemon."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

import tests.test_daemon
from tests.test_daemon import PUBLIC, TOKEN, running
from voicebridge.peers.realtime_server import RealtimePeer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import place_call


async def test_late_caller_transcripts_are_stored_in_speaking_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each caller transcript comes 2 s late (after the answer to it); the stored lines still alternate as spoken."""
    monkeypatch.setattr(tests.test_daemon, "RealtimePeer", partial(RealtimePeer, transcript_delay_s=2.0))
    with trio.fail_after(60):
        async with running(tmp_path, "full_order") as r:
            result = await place_call(r.base, load_scenario("full_order"), public_url=PUBLIC, auth_token=TOKEN)
            with trio.fail_after(10):
                while len(lines := await r.store.transcript(result.call_sid)) < 9:
                    await trio.sleep(0.05)
    roles = [line.role for line in lines]
    assert roles[:9] == ["assistant", "caller"] * 4 + ["assistant"], [(x.role, x.text) for x in lines]
    caller = [line.text.lower() for line in lines if line.role == "caller"]
    assert "pepperoni" in caller[0] and "margherita" in caller[1] and "yes" in caller[3]
