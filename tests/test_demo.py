"""`voicebridge demo`: a whole call through the real daemon on loopback, printed as it happens."""

from __future__ import annotations

import array
import io
import wave
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
    # the call's own recording, offline: caller left, what the caller heard right, both with sound
    assert result.recording is not None and result.recording.parent == tmp_path / "recordings" / "default"
    assert f"the call's recording (caller left, what the caller heard right): {result.recording}" in text
    with wave.open(str(result.recording), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        samples = array.array("h", w.readframes(w.getnframes()))
    assert any(samples[0::2]) and any(samples[1::2])
