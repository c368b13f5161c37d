"""Session setup does not wait for `session.updated`: the greeting can be asked for at once.

The Realtime API applies a session's events in order, so `response.create` right behind
`session.update` is answered with the new settings; waiting for the acknowledgement only adds
its round trip to the caller's first audio (bench/greeting.py measures it).
"""

from __future__ import annotations

import json

import pytest
import trio

from voicebridge.edges.protocol import realtime as rt
from voicebridge.edges.transport import memory_stream_pair
from voicebridge.engine.session import SetupError, open_session
from voicebridge.peers import realtime_events as ev

SESSION = ev.session_object(ev.default_session("gpt-realtime"), session_id="sess_1", expires_at=0)


async def test_setup_sends_session_update_and_returns_at_session_created_without_the_ack() -> None:
    bridge, service = memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def setup() -> None:
                await open_session(bridge, rt.SessionSettings(instructions="Greet."), timeout_s=5)
                done.set()

            nursery.start_soon(setup)
            first = json.loads(await service.receive())
            assert first["type"] == "session.update"  # sent at once, before session.created arrived
            assert first["session"]["instructions"] == "Greet."
            await service.send(json.dumps(ev.session_created("event_0", SESSION)))
            await done.wait()  # no session.updated was ever sent


async def test_setup_still_reports_a_refused_session() -> None:
    bridge, service = memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def refuse() -> None:
                await service.receive()
                await service.send(json.dumps(ev.error("event_0", type="invalid_request_error",
                                                        code="invalid_api_key", message="bad key")))

            nursery.start_soon(refuse)
            with pytest.raises(SetupError, match="invalid_api_key"):
                await open_session(bridge, rt.SessionSettings(instructions="Greet."), timeout_s=5)
