"""Logs of a real call: one JSON object per line, the call sid on call lines, no audio, no secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import trio

from test_daemon import PUBLIC, TOKEN, running
from voicebridge.ops.logs import setup_logging
from voicebridge.peers.clips import load_clip
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import place_call


async def test_a_calls_logs_are_json_with_call_sid_and_never_audio_or_secrets(tmp_path: Path) -> None:
    """Every line parses as JSON; the call's lines name its sid; no key, token or audio appears."""
    buffer = io.StringIO()
    api_key = "sk-test-0123456789-secret"
    root = logging.getLogger()
    old_level = root.level
    handler = setup_logging("DEBUG", "json", buffer, secrets=[api_key, TOKEN])
    try:
        with trio.fail_after(40):
            async with running(tmp_path, openai_api_key=api_key) as r:
                result = await place_call(r.base, load_scenario("dtmf_transfer"), public_url=PUBLIC,
                                          auth_token=TOKEN)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = buffer.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines, "the call logged nothing"
    call_lines = [line for line in lines if line.get("logger") == "voicebridge.call"]
    assert call_lines and all(line.get("call_sid") == result.call_sid for line in call_lines)
    assert any(line.get("event") == "call_ended" for line in call_lines)
    assert api_key not in text and TOKEN not in text
    greeting = base64.b64encode(load_clip("a_greeting").audio[1600:1720]).decode()
    assert greeting[:40] not in text  # a stretch of the AI's audio, base64, as it travelled
    assert not re.search(r"[A-Za-z0-9+/]{160,}", text)  # no base64 frame of any kind (a 20 ms frame is 216)
