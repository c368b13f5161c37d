"""The Realtime client over TLS (`wss://`) on loopback, with a certificate made by the test (trustme)."""

from __future__ import annotations

import re
import ssl
import struct
from typing import Any

import pytest
import trio
import trustme

from test_ws_conformance import FrameReader, frame
from voicebridge.edges.transport import StreamClosed, ws_accept_value, ws_connect


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def tls_server(ca: trustme.CA, script: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """One TLS connection on 127.0.0.1 with a certificate for "localhost"; upgrade, then `script`."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    tcp = await listeners[0].accept()
    stream = trio.SSLStream(tcp, server_ctx, server_side=True)
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        raw, _, rest = head.partition(b"\r\n\r\n")
        assert raw.startswith(b"GET /v1/realtime?model=m HTTP/1.1\r\n")
        assert re.search(rb"(?im)^host: localhost:\d+\r?$", raw)
        key = re.search(rb"(?im)^sec-websocket-key: *(\S+)", raw)
        assert key is not None
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              b"Sec-WebSocket-Accept: " + ws_accept_value(key.group(1).decode()).encode() + b"\r\n\r\n")
        await script(FrameReader(stream, rest))
    finally:
        await trio.aclose_forcefully(stream)
        await listeners[0].aclose()


async def test_wss_round_trip_ping_and_close(ca: trustme.CA) -> None:
    """Text both ways, a ping answered with a masked pong of the same payload, the close handshake."""
    seen: list[Any] = []

    async def script(peer: FrameReader) -> None:
        await peer.stream.send_all(frame(0x1, b'{"type":"session.created"}', mask=None) + frame(0x9, b"tls?", mask=None))
        first, second = await peer.next(), await peer.next()  # the pong and the client's text, in either order
        seen.extend(sorted([first, second], key=lambda f: f[0] != 0xA))
        await peer.stream.send_all(frame(0x8, struct.pack("!H", 1000), mask=None))
        seen.append(await peer.next())  # the close answer

    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(tls_server, ca, script)
            ws = await ws_connect(f"wss://localhost:{port}/v1/realtime?model=m", [], ssl_context=client_ctx)
            assert await ws.receive() == '{"type":"session.created"}'
            await ws.send('{"type":"session.update"}')
            with pytest.raises(StreamClosed) as info:
                await ws.receive()
            assert info.value.code == 1000
            await ws.aclose()
    (pong_op, pong, pong_key), (text_op, text, text_key), (close_op, close, close_key) = seen
    assert (pong_op, pong) == (0xA, b"tls?") and pong_key is not None
    assert (text_op, text) == (0x1, b'{"type":"session.update"}') and text_key is not None
    assert (close_op, close[:2]) == (0x8, struct.pack("!H", 1000)) and close_key is not None


async def test_wss_refuses_a_certificate_it_does_not_trust(ca: trustme.CA) -> None:
    async def script(peer: FrameReader) -> None:
        pytest.fail("the handshake must not complete")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(tls_server, ca, script)
            with pytest.raises(trio.BrokenResourceError) as info:
                await ws_connect(f"wss://localhost:{port}/v1/realtime?model=m", [],
                                 ssl_context=ssl.create_default_context())  # the system store: not our test CA
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            nursery.cancel_scope.cancel()


async def test_wss_protocol_error_close_frame_reaches_the_server(ca: trustme.CA) -> None:
    """Over TLS the 1002 close frame is written too (it waits in the send queue, then is flushed)."""
    codes: list[int] = []

    async def script(peer: FrameReader) -> None:
        await peer.stream.send_all(frame(0x1, b"{}", rsv=1, mask=None))
        codes.append(await peer.close_code())

    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(tls_server, ca, script)
            ws = await ws_connect(f"wss://localhost:{port}/v1/realtime?model=m", [], ssl_context=client_ctx)
            with pytest.raises(StreamClosed):
                await ws.receive()
            await ws.aclose()
    assert codes == [1002]
