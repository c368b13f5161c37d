"""RFC 6455 on the wire, both sides: the public front (server) and `ws_connect` (client).

Server side: the real front listener (`edges.front.serve_front`) on loopback, with a call
service whose calls echo each text message back, so what is checked is the framing alone.
Client side: `ws_connect` against a loopback server scripted here byte by byte. Every frame is
written by hand, so each case is exactly the bytes RFC 6455 describes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import struct
from functools import partial
from typing import Any

import attrs
import pytest
import trio
from twilio.request_validator import RequestValidator

from voicebridge.config import Config
from voicebridge.edges.front import MEDIA_MAX_MESSAGE_BYTES, serve_front
from voicebridge.edges.security import StreamTokens, TwilioSignatures
from voicebridge.edges.transport import MessageStream, StreamClosed, ws_accept_value, ws_connect
from voicebridge.ops.metrics import Metrics

TOKEN = "conformance-token-0123456789abcdef"
PUBLIC = "https://voicebridge-test.invalid"
KEY = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = KEY,
          length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FrameReader:
    """Reads frames from a trio stream (masked or not), for the side scripted by the test."""

    def __init__(self, stream: trio.abc.Stream, data: bytes = b"") -> None:
        self.stream = stream
        self.buf = bytearray(data)

    async def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    async def next(self) -> tuple[int, bytes, bytes | None]:
        """(opcode, payload, masking key or None)."""
        await self._need(2)
        n = self.buf[1] & 0x7F
        pos = 2
        if n == 126:
            await self._need(4)
            n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            await self._need(10)
            n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
        key = None
        if self.buf[1] & 0x80:
            await self._need(pos + 4)
            key, pos = bytes(self.buf[pos:pos + 4]), pos + 4
        await self._need(pos + n)
        payload = bytes(self.buf[pos:pos + n])
        if key is not None:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        opcode = self.buf[0] & 0x0F
        del self.buf[:pos + n]
        return opcode, payload, key

    async def close_code(self) -> int:
        """Skip to the close frame and return its code."""
        while True:
            opcode, payload, _ = await self.next()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])


# -- server side: the front listener --------------------------------------------------------


@attrs.define
class EchoService:
    """A CallService whose calls echo every text message until the peer closes."""

    config: Config
    signatures: TwilioSignatures
    tokens: StreamTokens = attrs.field(factory=lambda: StreamTokens(ttl_s=60))
    metrics: Metrics = attrs.field(factory=Metrics)
    draining: bool = False
    ended: list[StreamClosed] = attrs.field(factory=list)

    def prewarm(self, call_sid: str) -> None:
        return None

    async def handle_stream(self, twilio: MessageStream) -> None:
        try:
            while True:
                await twilio.send(await twilio.receive())
        except StreamClosed as exc:
            self.ended.append(exc)

    async def outcome_of(self, call_sid: str) -> str | None:
        return None

    async def voicemail_received(self, call_sid: str, *, url: str, duration_s: int | None,
                                 from_number: str | None, business: str = "default") -> bool:
        return False

    async def not_ready_reason(self) -> str | None:
        return None


async def start_front(nursery: trio.Nursery, **kwargs: Any) -> tuple[int, EchoService]:
    service = EchoService(Config(public_url=PUBLIC, twilio_auth_token=TOKEN),
                          TwilioSignatures(TOKEN, PUBLIC, allow_unsigned=False))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    nursery.start_soon(partial(serve_front, service, listener, "/nonexistent/backend.sock", nursery, **kwargs))
    return listener.getsockname()[1], service


def upgrade_request(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    sig = RequestValidator(TOKEN).compute_signature(PUBLIC.replace("https", "wss") + "/media-stream", {})
    return (b"GET /media-stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
            b"X-Twilio-Signature: " + sig.encode() + b"\r\n\r\n")


async def open_media(port: int) -> FrameReader:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    raw, _, rest = head.partition(b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in raw  # RFC 6455 1.3's example
    return FrameReader(stream, rest)


async def test_server_reassembles_fragments_and_answers_a_ping_between_them() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_front(nursery)
            peer = await open_media(port)
            await peer.stream.send_all(frame(0x1, b'{"event":', fin=False) + frame(0x9, b"are you there")
                                       + frame(0x0, b' "conn', fin=False) + frame(0xA, b"unsolicited")
                                       + frame(0x0, "ected é€\"}".encode()))
            assert await peer.next() == (0xA, b"are you there", None)  # pong, same payload, unmasked
            assert await peer.next() == (0x1, '{"event": "connected é€"}'.encode(), None)
            nursery.cancel_scope.cancel()


async def test_server_close_handshake_answers_with_the_same_code() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, service = await start_front(nursery)
            peer = await open_media(port)
            await peer.stream.send_all(frame(0x8, struct.pack("!H", 1001) + b"going away"))
            assert await peer.close_code() == 1001
            assert await peer.stream.receive_some(10) == b""  # then the server closes TCP
            with trio.fail_after(2):
                while not service.ended:
                    await trio.sleep(0.01)
            assert (service.ended[0].code, service.ended[0].reason) == (1001, "going away")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("name", "data", "code"), [
    ("unmasked client frame", frame(0x1, b"{}", mask=None), 1002),
    ("reserved opcode 0x3", frame(0x3, b"x"), 1002),
    ("reserved opcode 0xB", frame(0xB, b""), 1002),
    ("RSV1 bit without an extension", frame(0x1, b"{}", rsv=4), 1002),
    ("control frame of 126 bytes", frame(0x9, b"p" * 126), 1002),
    ("fragmented ping", frame(0x9, b"p", fin=False), 1002),
    ("continuation with nothing to continue", frame(0x0, b"x"), 1002),
    ("new message inside a fragmented one", frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),
    ("close frame with a 1-byte payload", frame(0x8, b"\x03"), 1002),
    ("close code 1005 sent by a peer", frame(0x8, struct.pack("!H", 1005)), 1002),
    ("invalid UTF-8 in text", frame(0x1, b'{"a": "\xc3\x28"}'), 1007),
    ("invalid UTF-8 split across fragments", frame(0x1, b"\xe2\x82", fin=False) + frame(0x0, b"\x28"), 1007),
    ("message past the limit", frame(0x1, b"x" * (MEDIA_MAX_MESSAGE_BYTES + 1)), 1009),
    ("fragments past the limit", frame(0x1, b"x" * MEDIA_MAX_MESSAGE_BYTES, fin=False) + frame(0x0, b"y"), 1009),
])
async def test_server_refuses_protocol_errors_with_the_rfc_close_code(name: str, data: bytes, code: int) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, service = await start_front(nursery)
            peer = await open_media(port)
            with contextlib.suppress(trio.BrokenResourceError):  # the server may stop reading at the header
                await peer.stream.send_all(data)
            assert await peer.close_code() == code, name
            nursery.cancel_scope.cancel()


async def test_server_refuses_a_16_mib_frame_from_its_header_without_reading_it() -> None:
    """Only the header and 1 KiB of a 16 MiB frame are sent: the 1009 close comes at once."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port, _ = await start_front(nursery)
            peer = await open_media(port)
            await peer.stream.send_all(frame(0x1, b"", length=16 * 1024 * 1024) + bytes(1024))
            assert await peer.close_code() == 1009
            nursery.cancel_scope.cancel()


async def test_the_size_limit_is_configurable() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_front(nursery, max_message_bytes=1024)
            peer = await open_media(port)
            await peer.stream.send_all(frame(0x1, b"x" * 1024))
            assert await peer.next() == (0x1, b"x" * 1024, None)
            await peer.stream.send_all(frame(0x1, b"x" * 1025))
            assert await peer.close_code() == 1009
            nursery.cancel_scope.cancel()


async def test_a_slow_client_is_dropped_and_holds_no_other_call(autojump_clock: trio.abc.Clock) -> None:
    """Half a request head, then silence (slowloris): other calls are served meanwhile, and the
    silent connection is closed once the head deadline passes."""
    async with trio.open_nursery() as nursery:
        port, _ = await start_front(nursery, head_timeout_s=10.0)
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(upgrade_request()[:40])
        half_open = await trio.open_tcp_stream("127.0.0.1", port)  # connected, never says a word
        peer = await open_media(port)
        await peer.stream.send_all(frame(0x1, b"still served"))
        assert await peer.next() == (0x1, b"still served", None)
        start = trio.current_time()
        with trio.fail_after(11):
            assert await slow.receive_some(10) == b""
            assert await half_open.receive_some(10) == b""
        assert trio.current_time() - start >= 9.9
        await peer.stream.send_all(frame(0x1, b"and after"))
        assert await peer.next() == (0x1, b"and after", None)
        nursery.cancel_scope.cancel()


async def test_a_request_head_that_is_not_http_gets_400() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_front(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /media-stream HTTP/1.1\r\nHost: a\r\nbroken header line\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 ")
            nursery.cancel_scope.cancel()


# -- client side: ws_connect -----------------------------------------------------------------


async def scripted_server(script: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept one connection, answer the upgrade, then run `script(reader)`."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(4096)
    raw, _, rest = head.partition(b"\r\n\r\n")
    key = re.search(rb"(?im)^sec-websocket-key: *(\S+)", raw)
    assert key is not None and len(base64.b64decode(key.group(1))) == 16
    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + ws_accept_value(key.group(1).decode()).encode() + b"\r\n\r\n")
    try:
        await script(FrameReader(stream, rest))
    finally:
        await stream.aclose()
        await listeners[0].aclose()


async def client_against(script: Any, **kwargs: Any) -> Any:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(scripted_server, script)
        return await ws_connect(f"ws://127.0.0.1:{port}/v1/realtime?model=m", [(b"authorization", b"Bearer k")], **kwargs)


async def test_client_reassembles_fragments_and_pongs_a_ping_between_them() -> None:
    got: list[Any] = []

    async def script(peer: FrameReader) -> None:
        await peer.stream.send_all(frame(0x1, b'{"type":', fin=False, mask=None) + frame(0x9, b"ping!", mask=None)
                                   + frame(0x0, b'"session.created"}', mask=None))
        got.append(await peer.next())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(scripted_server, script)
            ws = await ws_connect(f"ws://127.0.0.1:{port}/", [])
            assert await ws.receive() == '{"type":"session.created"}'
            with trio.fail_after(2):
                while not got:
                    await trio.sleep(0.01)
            await ws.aclose()
    opcode, payload, key = got[0]
    assert (opcode, payload) == (0xA, b"ping!") and key is not None  # masked, as a client must


@pytest.mark.parametrize(("name", "data", "code"), [
    ("masked frame from the server", frame(0x1, b"{}"), 1002),
    ("reserved bits", frame(0x1, b"{}", rsv=2, mask=None), 1002),
    ("oversized control frame", frame(0xA, b"p" * 126, mask=None), 1002),
    ("invalid UTF-8", frame(0x1, b"\xff", mask=None), 1007),
    ("past the client's limit", frame(0x1, b"x" * 2048, mask=None), 1009),
])
async def test_client_refuses_protocol_errors_with_the_rfc_close_code(name: str, data: bytes, code: int) -> None:
    seen: list[int] = []

    async def script(peer: FrameReader) -> None:
        await peer.stream.send_all(data)
        seen.append(await peer.close_code())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(scripted_server, script)
            ws = await ws_connect(f"ws://127.0.0.1:{port}/", [], max_message_bytes=1024)
            with pytest.raises(StreamClosed) as info:
                await ws.receive()
            assert info.value.code == code
            await ws.aclose()
    assert seen == [code], name


async def test_client_close_handshake_and_masking_keys() -> None:
    """Each client frame has its own masking key; a server close is answered with its code."""
    keys: list[bytes] = []
    texts: list[bytes] = []

    async def script(peer: FrameReader) -> None:
        for _ in range(64):
            opcode, payload, key = await peer.next()
            assert key is not None
            keys.append(key)
            texts.append(payload)
        await peer.stream.send_all(frame(0x8, struct.pack("!H", 4000) + b"rotate", mask=None))
        opcode, payload, key = await peer.next()
        assert (opcode, payload[:2], key is not None) == (0x8, struct.pack("!H", 4000), True)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(scripted_server, script)
            ws = await ws_connect(f"ws://127.0.0.1:{port}/", [])
            for i in range(64):
                await ws.send('{"n": %d}' % i)
            with pytest.raises(StreamClosed) as info:
                await ws.receive()
            assert (info.value.code, info.value.reason) == (4000, "rotate")
            await ws.aclose()
    assert texts == [b'{"n": %d}' % i for i in range(64)]
    assert len(set(keys)) >= 60  # 32 random bits each: repeats are vanishingly rare
    assert b"\x00\x00\x00\x00" not in keys


async def test_client_refused_handshake_is_reported() -> None:
    async def refuse(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()
        await listeners[0].aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(refuse)
            with pytest.raises(StreamClosed, match="HTTP 401"):
                await ws_connect(f"ws://127.0.0.1:{port}/", [])


def test_masking_keys_come_from_the_os_random_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are drawn from `secrets` (the OS CSPRNG), not a seeded PRNG."""
    from voicebridge.edges import transport

    drawn: list[int] = []
    real = transport.secrets.token_bytes

    def spy(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(transport.secrets, "token_bytes", spy)
    ws = transport.RawWebSocket(client=True)
    data = ws._frame(0x1, b"hello")
    assert drawn == [4] and data[1] & 0x80
    assert os.urandom  # the source `secrets` uses
