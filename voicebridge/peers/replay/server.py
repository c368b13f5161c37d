"""Replay, part 2: the replay Realtime server, which plays a recording's server events to the bridge."""

from __future__ import annotations

import contextlib

import json
import socket
import struct
import time
import urllib.parse
from functools import partial
from typing import Any

import attrs
import trio

from voicebridge.edges.transport import close_quietly
from voicebridge.peers.wakeup import Wakeup as _Signal
from voicebridge.peers.replay.plan import CLOSE_TIMEOUT_S, REALTIME_PATH, is_bulk_audio



# -- what the bridge sent in the replay -------------------------------------------------------------


@attrs.define
class Observed:
    t: float  # absolute trio time; made relative to the stream start when compared
    text: str | None
    close_code: int | None = None
    is_close: bool = False




class _Socket:
    """One socket as a replay peer sees it: what the bridge sent on it, and how it ended."""

    def __init__(self, name: str, ws: Any, activity: _Signal) -> None:
        self.name = name
        self.ws = ws
        self.activity = activity
        self.received: list[Observed] = []
        self.controls = 0
        self.ready = trio.Event()  # open for the recorded traffic (a Realtime one: after its handshake)
        self.closed = trio.Event()
        self.closed_by_us = False

    def got(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        self.received.append(Observed(trio.current_time(), text))
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not is_bulk_audio(self.name, msg):
            self.controls += 1
        self.activity.fire()

    def ended(self, reason: Any) -> None:
        """The socket closed: record the bridge's close, unless this side closed it first."""
        if not self.closed.is_set():
            if not self.closed_by_us:
                code = getattr(reason, "code", None) if reason is not None else 1006
                self.received.append(Observed(trio.current_time(), None, close_code=code, is_close=True))
            self.closed.set()
            self.activity.fire()

    async def send(self, text: str) -> bool:
        from trio_websocket import ConnectionClosed

        if self.closed.is_set() or self.closed_by_us:
            return False
        try:
            await self.ws.send_message(text)
        except ConnectionClosed:
            return False
        return True

    async def close(self, code: int = 1000) -> None:
        if self.closed.is_set() or self.closed_by_us:
            return
        self.closed_by_us = True
        await close_quietly(self.ws, code)

    async def abort(self) -> None:
        """Break the connection as a network failure does (TCP reset, no close frame)."""
        if self.closed.is_set() or self.closed_by_us:
            return
        self.closed_by_us = True
        raw = getattr(self.ws, "_stream", None)  # trio-websocket has no public abort
        if not isinstance(raw, trio.SocketStream):
            await self.close(1011)
            return
        with contextlib.suppress(OSError):  # RST instead of FIN, as on a network failure
            raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with trio.CancelScope(shield=True):
            await raw.aclose()


class ReplayRealtimeServer:
    """A Realtime server that answers each connection's handshake, then waits to be driven."""

    def __init__(self, activity: _Signal) -> None:
        self.activity = activity
        self.connections: list[_Socket] = []
        self.rejected: list[str] = []
        self.handshakes: list[dict[str, Any]] = []  # the `session` of each connection's session.update

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        from trio_websocket import serve_websocket

        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, self._handle, "127.0.0.1", 0, None,
                                                 max_message_size=4 * 1024 * 1024, disconnect_timeout=CLOSE_TIMEOUT_S))
            task_status.started(f"ws://127.0.0.1:{server.port}{REALTIME_PATH}")

    def connection(self, number: int) -> _Socket | None:
        return self.connections[number - 1] if 0 < number <= len(self.connections) else None

    async def _handle(self, request: Any) -> None:
        from trio_websocket import ConnectionClosed

        from voicebridge.peers import realtime_events as ev

        target = urllib.parse.urlsplit(request.path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        auth = headers.get("authorization", "")
        problem = None
        if target.path != REALTIME_PATH:
            problem = (404, f"connection to {target.path[:60]!r} instead of {REALTIME_PATH}")
        elif auth[:7].lower() != "bearer " or not auth[7:].strip():
            problem = (401, "connection without an Authorization: Bearer key")
        elif "openai-beta" in headers:
            problem = (400, "connection with an OpenAI-Beta header (the beta interface)")
        if problem is not None:
            self.rejected.append(problem[1])
            body = json.dumps({"error": {"message": problem[1], "type": "invalid_request_error"}}).encode()
            await request.reject(problem[0], extra_headers=[(b"content-type", b"application/json")], body=body)
            return
        ws = await request.accept()
        conn = _Socket(f"realtime#{len(self.connections) + 1}", ws, self.activity)
        self.connections.append(conn)
        self.activity.fire()
        model = (urllib.parse.parse_qs(target.query).get("model") or ["gpt-realtime"])[0]
        ids = ev.IdMaker(len(self.connections))
        config = ev.default_session(model)
        session_id = ids.session()
        expires_at = int(time.time()) + 3600  # as the service: an hour from now
        try:
            await ws.send_message(json.dumps(ev.session_created(ids.event(), ev.session_object(
                config, session_id=session_id, expires_at=expires_at))))
            while True:
                text = await ws.get_message()
                update = None if conn.ready.is_set() else _session_update(text)
                if update is not None:
                    self.handshakes.append(update)
                    config = ev.merge_session(config, update)
                    await ws.send_message(json.dumps(ev.session_updated(ids.event(), ev.session_object(
                        config, session_id=session_id, expires_at=expires_at))))
                    conn.ready.set()
                    self.activity.fire()
                    continue
                conn.got(text)
        except ConnectionClosed as exc:
            conn.ended(exc.reason)


def _session_update(text: str | bytes) -> dict[str, Any] | None:
    from voicebridge.edges.protocol.realtime import ClientEventError, SessionUpdate, parse_client

    try:
        event = parse_client(text)
    except ClientEventError:
        return None
    return event.session if isinstance(event, SessionUpdate) else None
