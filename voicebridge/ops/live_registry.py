"""This process's live calls, mirrored into the store's shared `live_calls` table.

Every process on one database writes its own calls there (started, each flow state change,
ended), and refreshes their heartbeat every `heartbeat_s`; the staff page reads
`Store.live_calls()`, which drops the calls of a process whose heartbeat stopped (it crashed).
The call path never waits on the database: the hooks only note the change, and one task
writes the notes in the daemon's nursery (at most one pending note per live call).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

import attrs
import trio

from voicebridge.ops.store import Store, StoreError

log = logging.getLogger("voicebridge.ops.live_registry")

HEARTBEAT_S = 20.0  # well inside the store's LIVE_STALE_S (90 s)
WRITE_TIMEOUT_S = 10.0


@attrs.define
class _Entry:
    state: str
    started_at: datetime
    summary: dict[str, Any]
    business: str | None


class LiveRegistry:
    """Notes changes from the call hooks (sync, instant) and writes them from `run`."""

    def __init__(self, store: Store, *, business: str | None = None, heartbeat_s: float = HEARTBEAT_S,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        if heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be positive")
        self.store = store
        self.business = business
        self.heartbeat_s = heartbeat_s
        self._now = now
        self._live: dict[str, _Entry] = {}
        self._dirty: set[str] = set()  # calls whose row must be written (or removed, when not live)
        self._wake = trio.Event()

    def started(self, call_sid: str, state: str, summary: dict[str, Any] | None = None, *,
                business: str | None = None) -> None:
        """A call went live (`business`: whose call it is, if not the registry's default)."""
        self._live[call_sid] = _Entry(state, self._now(), dict(summary or {}), business or self.business)
        self._note(call_sid)

    def state(self, call_sid: str, state: str) -> None:
        entry = self._live.get(call_sid)
        if entry is not None and entry.state != state:
            entry.state = state
            self._note(call_sid)

    def ended(self, call_sid: str) -> None:
        if self._live.pop(call_sid, None) is not None:
            self._note(call_sid)

    def _note(self, call_sid: str) -> None:
        self._dirty.add(call_sid)
        self._wake.set()

    async def flush(self) -> None:
        """Write every noted change now; a failed write stays noted for the next try."""
        while self._dirty:
            sid = self._dirty.pop()
            entry = self._live.get(sid)
            try:
                with trio.fail_after(WRITE_TIMEOUT_S):
                    if entry is None:
                        await self.store.live_call_remove(sid)
                    else:
                        await self.store.live_call_upsert(sid, state=entry.state, started_at=entry.started_at,
                                                          business=entry.business, summary=entry.summary,
                                                          now=self._now())
            except (StoreError, trio.TooSlowError) as exc:
                self._dirty.add(sid)
                log.warning("live-call registry not updated: %s", exc, extra={"event": "store_error"})
                return

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write notes as they come and beat every `heartbeat_s`, until cancelled; then take this
        process's calls off the list (bounded)."""
        task_status.started()
        try:
            while True:
                self._wake = trio.Event()
                await self.flush()
                if self._live:
                    try:
                        with trio.fail_after(WRITE_TIMEOUT_S):
                            await self.store.live_calls_heartbeat(now=self._now())
                    except (StoreError, trio.TooSlowError) as exc:
                        log.warning("live-call heartbeat failed: %s", exc, extra={"event": "store_error"})
                with trio.move_on_after(self.heartbeat_s if not self._dirty else min(self.heartbeat_s, 1.0)):
                    await self._wake.wait()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT_S):
                for sid in list(self._live):
                    self.ended(sid)
                await self.flush()
