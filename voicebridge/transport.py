"""Message streams: the one interface a call's tasks use to talk to a WebSocket peer.

A call never touches Quart's or trio-websocket's objects directly; it gets a `MessageStream`
(text frames in, text frames out). The same call code therefore runs over the real sockets,
over an in-memory pair on a mock clock (tests), and through a recorder.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import trio


class StreamClosed(Exception):
    """The peer closed the stream, or it broke. `code` is the WebSocket close code."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"stream closed (code={code}, reason={reason!r})")
        self.code = code
        self.reason = reason


class MessageStream(Protocol):
    async def send(self, text: str) -> None:
        """Send one text frame; raises StreamClosed if the stream is gone."""

    async def receive(self) -> str:
        """The next text frame; raises StreamClosed when the stream ends."""

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent)."""


# -- in memory ----------------------------------------------------------------------------


class MemoryStream:
    """One end of an in-memory stream pair (see `memory_stream_pair`)."""

    def __init__(self, send: trio.MemorySendChannel[str], recv: trio.MemoryReceiveChannel[str]) -> None:
        self._send = send
        self._recv = recv
        self.closed: StreamClosed | None = None
        self.peer: MemoryStream | None = None

    async def send(self, text: str) -> None:
        if self.closed is not None:
            raise self.closed
        try:
            await self._send.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self.peer_closed() from None

    async def receive(self) -> str:
        if self.closed is not None:
            raise self.closed
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self.peer_closed() from None

    def peer_closed(self) -> StreamClosed:
        if self.peer is not None and self.peer.closed is not None:
            return self.peer.closed
        return StreamClosed(1006, "peer gone")

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = StreamClosed(code, reason)
            await self._send.aclose()
            await self._recv.aclose()


def memory_stream_pair(buffer: float = math.inf) -> tuple[MemoryStream, MemoryStream]:
    """Two connected ends; closing one makes the other's receive raise StreamClosed."""
    a_send, b_recv = trio.open_memory_channel[str](buffer)
    b_send, a_recv = trio.open_memory_channel[str](buffer)
    a, b = MemoryStream(a_send, a_recv), MemoryStream(b_send, b_recv)
    a.peer, b.peer = b, a
    return a, b


# -- trio-websocket -------------------------------------------------------------------------


class TrioWebSocketStream:
    """A trio-websocket connection (client or server side) as a MessageStream."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, text: str) -> None:
        from trio_websocket import ConnectionClosed

        try:
            await self.ws.send_message(text)
        except ConnectionClosed as exc:
            raise _closed_from(exc.reason) from None

    async def receive(self) -> str:
        from trio_websocket import ConnectionClosed

        while True:
            try:
                msg = await self.ws.get_message()
            except ConnectionClosed as exc:
                raise _closed_from(exc.reason) from None
            if isinstance(msg, str):
                return msg
            # Binary frames are not part of either protocol; skip them like unknown events.

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.aclose(code, reason)


def _closed_from(reason: Any) -> StreamClosed:
    if reason is None:
        return StreamClosed(1006, "connection lost")
    return StreamClosed(getattr(reason, "code", None), getattr(reason, "reason", None) or "")


# -- Quart websocket (server side of /media-stream) -----------------------------------------


class QuartWebSocketStream:
    """Quart's request-local `websocket` object as a MessageStream."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.closed = False

    async def send(self, text: str) -> None:
        if self.closed:
            raise StreamClosed(1000, "closed by us")
        try:
            await self.ws.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(1006, type(exc).__name__) from None

    async def receive(self) -> str:
        while True:
            if self.closed:
                raise StreamClosed(1000, "closed by us")
            try:
                msg = await self.ws.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
                raise StreamClosed(1006, type(exc).__name__) from None
            if isinstance(msg, str):
                return msg

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            try:
                await self.ws.close(code, reason)
            except Exception:  # already gone: closing is best effort
                pass


CLOSE_TIMEOUT_S = 2.0


async def close_quietly(stream: MessageStream, code: int = 1000, reason: str = "") -> None:
    """Close `stream` even while being cancelled, but never wait more than CLOSE_TIMEOUT_S.

    A WebSocket close waits for the peer's answer; if the peer (or our own reader task) is
    gone, that answer never comes, and an unbounded shielded wait would hang the caller.
    """
    with trio.CancelScope(shield=True):
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                await stream.aclose(code, reason)
            except Exception:  # already broken: nothing left to close cleanly
                pass
