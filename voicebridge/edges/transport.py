"""Message streams: the one interface a call's tasks use to talk to a WebSocket peer.

A call never touches Quart's or trio-websocket's objects directly; it gets a `MessageStream`
(text frames in, text frames out). The same call code therefore runs over the real sockets,
over an in-memory pair on a mock clock (tests), and through a recorder.

Why one module of this length: the stream interface and its implementations (in memory, trio-
websocket, Quart, the RFC 6455 framer) share one contract of errors and close codes; the framer
is about half of it and is proven against wsproto by tests/test_ws_fuzz.py.
"""

from __future__ import annotations

import codecs
import contextlib
import secrets
import socket
from typing import Any, NoReturn, Protocol

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


MEMORY_STREAM_BUFFER = 1024  # messages in flight each way, like a socket's buffer: a sender then waits


def memory_stream_pair(buffer: int = MEMORY_STREAM_BUFFER) -> tuple[MemoryStream, MemoryStream]:
    """Two connected ends; closing one makes the other's receive raise StreamClosed.

    Each direction holds at most `buffer` messages; past that `send` waits for the reader, as a
    socket's sender does, so a stalled reader cannot make memory grow without end."""
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
            with contextlib.suppress(Exception):  # already gone: closing is best effort
                await self.ws.close(code, reason)


CLOSE_TIMEOUT_S = 2.0


async def close_quietly(stream: MessageStream, code: int = 1000, reason: str = "") -> None:
    """Close `stream` even while being cancelled, but never wait more than CLOSE_TIMEOUT_S.

    A WebSocket close waits for the peer's answer; if the peer (or our own reader task) is
    gone, that answer never comes, and an unbounded shielded wait would hang the caller.
    """
    with trio.CancelScope(shield=True):
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            with contextlib.suppress(Exception):  # already broken: nothing left to close cleanly
                await stream.aclose(code, reason)


# -- lean WebSocket (RFC 6455) on a socket: the per-frame hot path ---------------------------

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the Realtime client: session and response events carry whole prompts
_YIELD_EVERY = 32  # messages served from the buffer before receive() yields to the scheduler anyway
# Close codes a peer may send (RFC 6455 7.4): registered ones it may use, and 3000-4999.
_PEER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})


def ws_accept_value(key: str) -> str:
    """The `Sec-WebSocket-Accept` answer to a `Sec-WebSocket-Key`."""
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(key.strip().encode("ascii") + _WS_GUID).digest()).decode("ascii")


def _xor(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    mask = key * (n // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask[:n], "little")).to_bytes(n, "little")


def _header(payload_len: int, first: int, mask_bit: int) -> bytes:
    if payload_len < 126:
        return bytes((first, mask_bit | payload_len))
    if payload_len < 65536:
        return bytes((first, mask_bit | 126)) + payload_len.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + payload_len.to_bytes(8, "big")


class RawWebSocket:
    """A WebSocket connection as a MessageStream, without background tasks or extra layers.

    Text frames are parsed in the task that calls `receive()`; `send()` frames and writes in the
    caller's task. On a plain socket both go straight to the kernel (non-blocking) and only wait
    for readiness when they must; `try_send_nowait()` hands frames to the kernel without awaiting
    at all, or refuses, so a relay can skip a task hop when nothing is queued. Over TLS (a trio
    Stream) the same framing runs on `receive_some`/`send_all`. Client ends mask what they send,
    with keys from the operating system's CSPRNG (RFC 6455 5.3).

    Protocol errors end the connection with the close code RFC 6455 gives them, in the order
    wsproto checks them (tests/test_ws_fuzz.py compares the two on random byte streams): 1002
    for a reserved opcode, RSV bit, a fragmented or > 125-byte control frame, a length not in
    its shortest form, a frame masked the wrong way, a stray or missing continuation, a bad close
    frame; 1007 for invalid UTF-8 in a text message or close reason; 1009 for a message longer
    than `max_message_bytes`, refused from its header, before any of its payload is read.
    """

    def __init__(self, sock: Any = None, *, stream: Any = None, client: bool = False, leftover: bytes = b"",
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._sock = sock  # a non-blocking stdlib socket (plain TCP), or None with `stream`
        self._stream = stream
        if sock is not None:
            sock.setblocking(False)
            try:  # small frames (marks, clear) must not wait for the peer's ACK (Nagle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP (a socketpair in tests)
        self._client = client
        self._buf = bytearray(leftover)
        self._frag: list[str] | None = None  # the text pieces of a fragmented message being received
        self._frag_op = 0x1
        self._frag_len = 0
        self._decoder: Any = None  # incremental UTF-8 decoder of a fragmented text message
        self._pending = b""  # bytes accepted for sending but not yet written (kept in order)
        self._sending = False
        self._send_lock = trio.Lock()
        self._served = 0
        self._max = max_message_bytes
        self.closed: StreamClosed | None = None
        self._close_sent = False

    # -- sending ---------------------------------------------------------------------------

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        if self._client:
            key = secrets.token_bytes(4)  # RFC 6455 5.3: unpredictable, from a strong source
            return _header(len(payload), 0x80 | opcode, 0x80) + key + _xor(payload, key)
        return _header(len(payload), 0x80 | opcode, 0) + payload

    def try_send_nowait(self, *texts: str) -> bool:
        """Write whole text frames now without awaiting; False (nothing sent) if that cannot be done in order."""
        if self.closed is not None or self._sending or self._pending or self._sock is None:
            return False
        data = b"".join(self._frame(0x1, t.encode("utf-8")) for t in texts)
        try:
            n = self._sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._broken(exc)
            return False
        if n < len(data):
            self._pending = data[n:]  # committed: the next send() writes it first
        return True

    async def send(self, text: str) -> None:
        await self._send_bytes(self._frame(0x1, text.encode("utf-8")))

    async def _send_bytes(self, data: bytes) -> None:
        if self.closed is not None:
            raise self.closed
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write what is pending, then `data`, in order (one writer at a time)."""
        async with self._send_lock:
            self._sending = True
            try:
                if self._stream is not None:
                    data = self._pending + data
                    self._pending = b""
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise self._broken(exc) from None
                    return
                data = self._pending + data
                self._pending = b""
                while data:
                    try:
                        n = self._sock.send(data)
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:
                        raise self._broken(exc) from None
                    data = data[n:]
                    if data:
                        try:
                            await trio.lowlevel.wait_writable(self._sock)
                        except trio.ClosedResourceError as exc:
                            raise self._broken(exc) from None
            finally:
                self._sending = False

    # -- receiving -------------------------------------------------------------------------

    async def receive(self) -> str:
        while True:
            msg = self._parse()
            if msg is not None:
                self._served += 1
                if self._served >= _YIELD_EVERY:  # a peer that never lets us block must not starve the others
                    self._served = 0
                    await trio.lowlevel.checkpoint()
                return msg
            if self.closed is not None:
                await self._flush_control()
                raise self.closed
            self._served = 0
            await self._fill()

    async def _flush_control(self) -> None:
        """Over TLS, control frames (pong, close) wait in `_pending` until a send: write them now."""
        if self._stream is not None and self._pending and not self._sending:
            with contextlib.suppress(StreamClosed), trio.move_on_after(1.0):
                await self._write(b"")

    async def _fill(self) -> None:
        if self._stream is not None:
            await self._flush_control()
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._broken(exc) from None
        else:
            while True:
                try:
                    data = self._sock.recv(65536)
                    break
                except BlockingIOError:  # nothing buffered: wait until the socket is readable
                    data = b""
                except OSError as exc:
                    raise self._broken(exc) from None
                try:
                    await trio.lowlevel.wait_readable(self._sock)
                except trio.ClosedResourceError as exc:
                    raise self._broken(exc) from None
        if not data:
            raise self._broken(None)
        self._buf += data

    def _parse(self) -> str | None:
        """The next complete text message in the buffer; handles control frames on the way.

        Raises StreamClosed (after queueing the close frame) on a protocol error; returns None
        when more bytes are needed, or when the peer's close frame was read (`closed` is set).
        """
        if self.closed is not None:
            return None
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            opcode, fin, n = b0 & 0x0F, b0 & 0x80, b1 & 0x7F
            if opcode >= 0x8:
                if opcode > 0xA:
                    self._fail(1002, "reserved opcode")
                if not fin:
                    self._fail(1002, "fragmented control frame")
                if n > 125:
                    self._fail(1002, "control frame longer than 125 bytes")
            elif opcode > 0x2:
                self._fail(1002, "reserved opcode")
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return None
                n, pos = int.from_bytes(buf[2:4], "big"), 4
                if n < 126:
                    self._fail(1002, "length not in its shortest form")
            elif n == 127:
                if len(buf) < 10:
                    return None
                n, pos = int.from_bytes(buf[2:10], "big"), 10
                if n < 65536 or n >> 63:
                    self._fail(1002, "length not in its shortest form")
            if b0 & 0x70:
                self._fail(1002, "reserved bits set")
            masked = b1 & 0x80
            if bool(masked) == self._client:
                self._fail(1002, "masked frame from a server" if masked else "unmasked frame from a client")
            if opcode == 0x0:
                if self._frag is None:
                    self._fail(1002, "unexpected continuation")
                if self._frag_len + n > self._max:
                    self._fail(1009, "message too big")
            elif opcode < 0x8:
                if self._frag is not None:
                    self._fail(1002, "expected a continuation")
                if n > self._max:  # refused from the header: the payload is never read
                    self._fail(1009, "message too big")
            end = pos + (4 if masked else 0) + n
            if len(buf) < end:
                return None
            if masked:
                payload = _xor(bytes(buf[pos + 4:end]), bytes(buf[pos:pos + 4]))
            else:
                payload = bytes(buf[pos:end])
            del buf[:end]
            if opcode == 0x8:
                self._peer_closed(payload)
                return None
            if opcode == 0x9:
                self._queue_control(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x0:
                assert self._frag is not None
                self._frag_len += n
                if self._decoder is not None:
                    self._frag.append(self._decode(payload, bool(fin)))
                if not fin:
                    continue
                parts, op = self._frag, self._frag_op
                self._frag, self._decoder = None, None
                if op == 0x1:
                    return "".join(parts)
                continue  # binary messages are part of neither protocol
            if not fin:  # the first frame of a fragmented message
                self._frag, self._frag_op, self._frag_len = [], opcode, n
                if opcode == 0x1:
                    self._decoder = codecs.getincrementaldecoder("utf-8")()
                    self._frag.append(self._decode(payload, False))
                continue
            if opcode == 0x2:
                continue
            try:
                return payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8")
        return None

    def _decode(self, payload: bytes, final: bool) -> str:
        try:
            text: str = self._decoder.decode(payload, final)
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8")
        return text

    def _peer_closed(self, payload: bytes) -> None:
        """The peer's close frame: check it, answer it with the same code, and mark the stream closed."""
        if not payload:
            code, reason = 1005, ""
        elif len(payload) == 1:
            self._fail(1002, "close frame with a 1-byte payload")
        else:
            code = int.from_bytes(payload[:2], "big")
            if not (code in _PEER_CLOSE_CODES or 3000 <= code <= 4999):
                self._fail(1002, "close frame with an invalid code")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in the close reason")
        self._queue_control(0x8, payload[:2])
        self.closed = StreamClosed(code, reason)

    def _queue_control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x8:
            if self._close_sent:
                return
            self._close_sent = True
        frame = self._frame(opcode, payload)
        if self._sock is not None and not self._sending and not self._pending:
            try:
                n = self._sock.send(frame)
                self._pending = frame[n:]
            except BlockingIOError:
                self._pending = frame
            except OSError as exc:  # the connection is gone: the next receive() reports it
                self._broken(exc)
        else:  # TLS, or a send in flight: appended in order, written by the next send or receive
            self._pending += frame

    def _fail(self, code: int, reason: str) -> NoReturn:
        self._queue_control(0x8, code.to_bytes(2, "big") + reason.encode())
        self.closed = StreamClosed(code, reason)
        raise self.closed

    def _broken(self, exc: BaseException | None) -> StreamClosed:
        if self.closed is None:
            self.closed = StreamClosed(1006, type(exc).__name__ if exc else "connection lost")
        return self.closed

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and release the socket; a task blocked in receive() gets StreamClosed."""
        if not self._close_sent and not (self.closed is not None and self.closed.code == 1006):
            self._close_sent = True
            frame = self._frame(0x8, code.to_bytes(2, "big") + reason.encode("utf-8")[:120])
            with contextlib.suppress(StreamClosed), trio.move_on_after(1.0):  # the peer may be gone already
                await self._send_bytes(frame)
        elif self._pending and self.closed is not None and self.closed.code != 1006:
            await self._flush_pending()
        if self.closed is None:
            self.closed = StreamClosed(code, reason or "closed by us")
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)
        elif self._sock is not None and self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def _flush_pending(self) -> None:
        """Write what is queued (our close frame after a protocol error), bounded: the peer may not read."""
        with contextlib.suppress(StreamClosed), trio.move_on_after(1.0):
            await self._write(b"")


def _handshake_request(host_header: str, target: str, key: str, headers: list[tuple[bytes, bytes]]) -> Any:
    import h11

    return h11.Request(method="GET", target=target, headers=[
        (b"host", host_header.encode("idna" if not host_header.isascii() else "ascii")),
        (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
        (b"sec-websocket-key", key.encode("ascii")), (b"sec-websocket-version", b"13"), *headers])


async def ws_connect(url: str, headers: list[tuple[bytes, bytes]], *, max_message_bytes: int = MAX_MESSAGE_BYTES,
                     ssl_context: Any = None) -> RawWebSocket:
    """Open a client WebSocket (ws:// or wss://) and do the opening handshake (HTTP heads by h11).

    `ssl_context` defaults to the system's trust store (`ssl.create_default_context()`)."""
    import base64
    import socket as _socket
    import urllib.parse

    import h11

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {parts.scheme}://")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    key = base64.b64encode(secrets.token_bytes(16)).decode("ascii")
    host_header = (f"[{host}]" if ":" in host else host) + ("" if parts.port is None else f":{port}")
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=65536)
    request = conn.send(_handshake_request(host_header, target, key, headers))
    stream: Any
    if parts.scheme == "wss":
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl_context)
    else:
        stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(request)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise StreamClosed(1002, f"handshake answer is not valid HTTP: {exc}") from None
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(16384)
                conn.receive_data(chunk)
                if not chunk and conn.their_state is h11.SEND_RESPONSE:
                    raise StreamClosed(1006, "closed during the handshake")
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                break
            if isinstance(event, (h11.Response, h11.InformationalResponse)):
                raise StreamClosed(1002, f"handshake refused: HTTP {event.status_code}")
            raise StreamClosed(1006, "closed during the handshake")
        fields = {k.lower(): v for k, v in event.headers}
        if fields.get(b"upgrade", b"").lower() != b"websocket":
            raise StreamClosed(1002, "handshake: not upgraded to websocket")
        if fields.get(b"sec-websocket-accept") != ws_accept_value(key).encode("ascii"):
            raise StreamClosed(1002, "handshake: wrong Sec-WebSocket-Accept")
        rest = conn.trailing_data[0]
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        raise
    if parts.scheme == "wss":
        return RawWebSocket(stream=stream, client=True, leftover=rest, max_message_bytes=max_message_bytes)
    fd = stream.socket.detach()
    sock = _socket.socket(fileno=fd)
    return RawWebSocket(sock, client=True, leftover=rest, max_message_bytes=max_message_bytes)
