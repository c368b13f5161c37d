"""Live updates for the staff page: the daemon's call notices fanned out to each open page.

Each open event stream subscribes with its own BOUNDED memory channel. Notices are pushed with
`send_nowait`; a page that cannot keep up (its channel full) is dropped, and its browser
reconnects and catches up from the store, so one slow tablet never holds a call back.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import trio

log = logging.getLogger("voicebridge.staff")

CHANNEL_SIZE = 256
LIVE_KINDS = frozenset({"state", "transcript", "tool", "ended", "transfer", "committed"})


class StaffHub:
    def __init__(self, cart_of: Callable[[str], dict[str, Any] | None] | None = None,
                 business_of: Callable[[str], str | None] | None = None) -> None:
        self._subscribers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self.cart_of = cart_of
        self.business_of = business_of  # a call's business: each page passes on only its own business's calls

    def subscribe(self) -> tuple[trio.MemorySendChannel[dict[str, Any]], trio.MemoryReceiveChannel[dict[str, Any]]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](CHANNEL_SIZE)
        self._subscribers.add(send)
        return send, receive

    def unsubscribe(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        self._subscribers.discard(send)
        send.close()

    def close_all(self) -> None:
        """End every open stream (shutdown): each browser reconnects and catches up by its last event id."""
        for send in list(self._subscribers):
            self.unsubscribe(send)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, message: dict[str, Any]) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(message)
            except trio.WouldBlock:  # too slow: drop it; the browser reconnects and catches up
                log.warning("a staff page fell behind; its stream is closed", extra={"event": "staff_stream_dropped"})
                self._subscribers.discard(send)
                send.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)

    def stored(self) -> None:
        """Something was written to the staff event log: every stream reads what is new."""
        self.publish({"type": "stored"})

    def observe(self, call_sid: str, kind: str, fields: dict[str, Any]) -> None:
        """A daemon observer: (call_sid, kind, fields) for every call notice."""
        if kind not in LIVE_KINDS or not self._subscribers:
            if kind == "committed":
                self.stored()
            return
        business = fields.get("business") if kind == "ended" else None
        if business is None and self.business_of is not None:
            business = self.business_of(call_sid)
        message: dict[str, Any] = {"type": "call", "sid": call_sid, "kind": kind, "business": business}
        if kind == "state":
            message["state"] = fields.get("state")
        elif kind == "transcript":
            message["role"], message["text"] = fields.get("role"), fields.get("text")
        elif kind == "ended":
            message["outcome"] = fields.get("outcome")
        if kind in ("tool", "committed") and self.cart_of is not None:
            message["cart"] = self.cart_of(call_sid)
        self.publish(message)
        if kind == "committed":
            self.stored()
