"""The front door: the public port. `/media-stream` upgrades are served here, the rest by Quart.

The Quart-Trio app (`edges.web`) is the application: it declares every route, `/media-stream`
included, and Hypercorn serves it on a private Unix socket. This listener reads each new
connection's first request head with h11: a WebSocket upgrade for `/media-stream` is checked
(signature 403, draining 503) and answered here, and the call then runs on a `RawWebSocket`
with no HTTP framework, task hop or wsproto in the audio path; every other connection is piped
byte for byte to Hypercorn. docs/architecture.md says why (the measurement that forced it).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import h11
import trio

from voicebridge.edges.service import CallService
from voicebridge.edges.transport import RawWebSocket, close_quietly, ws_accept_value

log = logging.getLogger("voicebridge.edges.front")

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0  # a client that has not sent its request head by then is dropped (slowloris)
MEDIA_MAX_MESSAGE_BYTES = 64 * 1024  # default `VOICEBRIDGE_WS_MAX_MESSAGE_BYTES`; see config.py


async def serve_front(daemon: CallService, listener: Any, backend: str, nursery: trio.Nursery, *,
                      max_message_bytes: int = MEDIA_MAX_MESSAGE_BYTES, head_timeout_s: float = HEAD_TIMEOUT_S) -> None:
    """Accept on `listener` (a listening stdlib socket) until cancelled; one task per connection in `nursery`."""
    listener.setblocking(False)
    while True:
        await trio.lowlevel.wait_readable(listener)
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:  # EMFILE and friends: keep serving the calls we have
            log.error("accept failed: %s", exc)
            await trio.sleep(0.1)
            continue
        nursery.start_soon(front_connection, daemon, conn, backend, max_message_bytes, head_timeout_s)


def _is_media_upgrade(req: h11.Request) -> bool:
    if req.method != b"GET" or req.target.partition(b"?")[0] != b"/media-stream":
        return False
    fields = _fields(req)
    return (fields.get(b"upgrade", b"").lower() == b"websocket"
            and b"upgrade" in (t.strip() for t in fields.get(b"connection", b"").lower().split(b",")))


def _fields(req: h11.Request) -> dict[bytes, bytes]:
    return {k: v for k, v in req.headers}  # h11 gives lower-case names


async def front_connection(daemon: CallService, conn: Any, backend: str,
                           max_message_bytes: int = MEDIA_MAX_MESSAGE_BYTES,
                           head_timeout_s: float = HEAD_TIMEOUT_S) -> None:
    """One accepted connection: read its first request head (bounded in size and time), then route it."""
    conn.setblocking(False)
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    raw = bytearray()
    event: Any = h11.NEED_DATA
    try:
        with trio.move_on_after(head_timeout_s):
            while event is h11.NEED_DATA:
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(conn)
                    continue
                except OSError:
                    data = b""
                raw += data
                http.receive_data(data)
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as exc:
                    await _answer(http, conn, exc.error_status_hint, "bad request\n")
                    return
        if not isinstance(event, h11.Request):  # timed out, or closed before a whole head
            conn.close()
            return
        if not _is_media_upgrade(event):
            await _pipe(conn, bytes(raw), backend)
            return
        fields = _fields(event)
        key = fields.get(b"sec-websocket-key", b"")
        if fields.get(b"sec-websocket-version") != b"13" or not key:
            await _answer(http, conn, 400, "bad websocket request\n")
            return
        path = event.target.partition(b"?")[0].decode("latin-1")
        signature = fields.get(b"x-twilio-signature")
        if not daemon.signatures.check_websocket(path, signature.decode("latin-1") if signature else None):
            log.warning("refused a media stream with a missing or wrong Twilio signature",
                        extra={"event": "bad_signature", "route": "/media-stream"})
            daemon.metrics.protocol_errors_total.labels("twilio").inc()
            await _answer(http, conn, 403, "forbidden\n")
            return
        if daemon.draining:
            await _answer(http, conn, 503, "draining\n")
            return
        accept = http.send(h11.InformationalResponse(status_code=101, reason=b"Switching Protocols", headers=[
            (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", ws_accept_value(key.decode("latin-1")).encode("ascii"))]))
        conn.sendall(accept)  # a few dozen bytes on a fresh socket: the kernel takes them at once
        rest = http.trailing_data[0]
    except BaseException:
        conn.close()
        raise
    ws = RawWebSocket(conn, leftover=rest, max_message_bytes=max_message_bytes)
    try:
        await daemon.handle_stream(ws)
    finally:
        await close_quietly(ws, 1000, "call ended")  # shielded, and bounded: the peer may be gone


async def _answer(http: h11.Connection, conn: Any, status: int, body: str) -> None:
    """A short plain-text answer, then close (the head was refused: nothing more is read)."""
    data = body.encode()
    with contextlib.suppress(OSError, h11.LocalProtocolError):  # the client is gone, or h11 can say nothing more
        head = http.send(h11.Response(status_code=status, headers=[
            (b"content-type", b"text/plain"), (b"content-length", str(len(data)).encode()), (b"connection", b"close")]))
        conn.sendall(head + (http.send(h11.Data(data=data)) or b"") + (http.send(h11.EndOfMessage()) or b""))
    conn.close()


async def _pipe(conn: Any, first: bytes, backend: str) -> None:
    """Relay one connection to Hypercorn's private socket, both ways, until both sides are done."""
    client = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
    try:
        server = await trio.open_unix_socket(backend)
    except OSError:
        await client.aclose()
        return
    async with client, server:
        await server.send_all(first)

        async def one_way(src: Any, dst: Any) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # either side hung up
                while data := await src.receive_some(65536):
                    await dst.send_all(data)
                await dst.send_eof()
            if src is server:  # Hypercorn is done with this connection: so are we
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, client, server)
            nursery.start_soon(one_way, server, client)
