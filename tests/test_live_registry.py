"""The live-call registry the daemon keeps in the shared store (voicebridge.ops.live_registry)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import trio
from trio.testing import MockClock

from voicebridge.ops.live_registry import LiveRegistry
from voicebridge.ops.store import Store

T0 = datetime(2025, 5, 2, 18, 0, 0, tzinfo=timezone.utc)


async def test_calls_are_listed_beat_while_alive_and_vanish_when_the_process_stops(
        db_target: Path | str, autojump_clock: MockClock) -> None:
    store = await Store.open(db_target, threaded=False)
    reader = await Store.open(db_target, threaded=False)  # another process's view
    start = trio.current_time()

    def now() -> datetime:
        return T0 + timedelta(seconds=trio.current_time() - start)

    try:
        registry = LiveRegistry(store, business="Tony's", heartbeat_s=20, now=now)
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            registry.started("CA1", "greeting", {"direction": "inbound"})
            registry.started("CA2", "greeting", business="Salon")
            registry.state("CA1", "ordering")
            await trio.sleep(1)
            listed = await reader.live_calls(now=now())
            assert [(c.call_sid, c.state, c.business, c.instance) for c in listed] == [
                ("CA1", "ordering", "Tony's", store.instance_id), ("CA2", "greeting", "Salon", store.instance_id)]
            registry.ended("CA2")
            await trio.sleep(300)  # far past the stale limit: the heartbeat keeps CA1 listed
            listed = await reader.live_calls(now=now())
            assert [c.call_sid for c in listed] == ["CA1"]
            assert listed[0].heartbeat_at >= now() - timedelta(seconds=21)
            nursery.cancel_scope.cancel()  # the process stops: its calls leave the list
        assert await reader.live_calls(now=now()) == []
    finally:
        await store.aclose()
        await reader.aclose()
