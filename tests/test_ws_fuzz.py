"""Differential fuzz: our RFC 6455 framer (`RawWebSocket`) against wsproto on the same bytes.

The same byte stream goes to both, as a server (frames must be masked) and as a client (must
not be): the text messages, the pongs and the close code (the peer's, or the one a protocol
error earns) must be the same. Whole frames are built from random headers (any opcode, RSV
bits, FIN, mask, length encoding, even one too short) and payloads (valid or broken UTF-8);
raw random bytes are fed too, where neither parser may accept what the other refuses.
"""

from __future__ import annotations

import contextlib

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from voicebridge.edges.transport import RawWebSocket, StreamClosed

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ours(data: bytes, *, client: bool) -> tuple[list[str], list[bytes], Any]:
    """(texts, pong payloads, verdict): verdict is ("close", code), ("error", code) or "more"."""
    ws = RawWebSocket(client=client, leftover=data, max_message_bytes=1 << 40)
    texts: list[str] = []
    try:
        while (msg := ws._parse()) is not None:
            texts.append(msg)
    except StreamClosed as exc:
        return texts, _pongs(ws._pending, client), ("error", exc.code)
    if ws.closed is not None:
        return texts, _pongs(ws._pending, client), ("close", ws.closed.code)
    return texts, _pongs(ws._pending, client), "more"


def _pongs(written: bytes, client: bool) -> list[bytes]:
    """The pong payloads in what our side wrote (our frames, masked if we are the client)."""
    proto = FrameProtocol(client=not client, extensions=[])
    proto.receive_bytes(written)
    out = []
    with contextlib.suppress(ParseFailed):  # a malformed stream: the pongs before the fault are what counts
        for frame in proto.received_frames():
            if frame.opcode is Opcode.PONG:
                out.append(bytes(frame.payload))
    return out


def theirs(data: bytes, *, client: bool) -> tuple[list[str], list[bytes], Any]:
    proto = FrameProtocol(client=client, extensions=[])
    proto.receive_bytes(data)
    texts, pongs, parts = [], [], []
    kind = None
    try:
        for frame in proto.received_frames():
            if frame.opcode is Opcode.PING:
                pongs.append(bytes(frame.payload))
            elif frame.opcode is Opcode.CLOSE:
                return texts, pongs, ("close", int(frame.payload[0]))
            elif frame.opcode is Opcode.PONG:
                continue
            else:
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    kind = frame.opcode
                parts.append(frame.payload)
                if frame.message_finished:
                    if kind is Opcode.TEXT:
                        texts.append("".join(parts))
                    parts, kind = [], None
    except ParseFailed as exc:
        return texts, pongs, ("error", int(exc.code))
    return texts, pongs, "more"


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None,
          length_form: int = 0, length_delta: int = 0) -> bytes:
    """One frame; `length_form` 1/2 forces the 16/64-bit length form, `length_delta` lies about the length."""
    n = len(payload) + length_delta
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if length_form == 0 and n < 126:
        head = bytes((b0, mbit | n))
    elif length_form in (0, 1) and n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


texts = st.one_of(st.text(max_size=40).map(lambda t: t.encode()),
                  st.binary(max_size=40),  # often invalid UTF-8
                  st.sampled_from([b"\xc3", b"\xe2\x82", b"\xff", "é".encode(), "€".encode()]))
close_payloads = st.one_of(
    st.just(b""), st.binary(min_size=1, max_size=1),
    st.tuples(st.sampled_from([999, 1000, 1001, 1002, 1004, 1005, 1006, 1007, 1011, 1014, 1015, 2999, 3000, 4999, 5000]),
              texts).map(lambda t: struct.pack("!H", t[0]) + t[1][:100]))


@st.composite
def frames(draw: Any, client: bool) -> bytes:
    """A stream of frames, most well formed, some broken in one way; masked as the role requires, mostly."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        opcode = draw(st.sampled_from([0x0, 0x1, 0x1, 0x2, 0x8, 0x9, 0x9, 0xA, 0x3, 0xB]))
        payload = draw(close_payloads if opcode == 0x8 else texts)
        if opcode >= 0x8 and draw(st.integers(0, 9)) == 0:
            payload = payload * 8 + bytes(126)  # an oversized control frame
        wrong_mask = draw(st.integers(0, 19)) == 0
        masked = (not client) != wrong_mask
        out += frame(opcode, payload, fin=draw(st.integers(0, 3)) > 0, rsv=draw(st.sampled_from([0, 0, 0, 0, 1, 4])),
                     mask=draw(st.binary(min_size=4, max_size=4)) if masked else None,
                     length_form=draw(st.sampled_from([0, 0, 0, 0, 1, 2])))
    return out


@FUZZ
@given(st.booleans(), st.data())
def test_same_messages_pongs_and_close_code_as_wsproto(client: bool, data: Any) -> None:
    stream = data.draw(frames(client))
    assert ours(stream, client=client) == theirs(stream, client=client)


@FUZZ
@given(st.booleans(), st.binary(max_size=200))
def test_random_bytes_neither_accepts_what_the_other_refuses(client: bool, stream: bytes) -> None:
    our_texts, our_pongs, our_verdict = ours(stream, client=client)
    their_texts, their_pongs, their_verdict = theirs(stream, client=client)
    # wsproto may judge a frame from its first payload bytes (UTF-8, continuation) while we wait
    # for the whole frame: when one of us still needs data, the other may be one frame ahead.
    if our_verdict == "more" or their_verdict == "more":
        n = min(len(our_texts), len(their_texts))
        assert our_texts[:n] == their_texts[:n]
        if our_verdict == "more" and their_verdict != "more":
            assert their_verdict[0] == "error" or len(their_texts) >= len(our_texts)
        return
    assert (our_texts, our_pongs, our_verdict) == (their_texts, their_pongs, their_verdict)


def test_known_streams_agree() -> None:
    """A few hand-made cases, so a reader sees what the comparison covers."""
    key = b"\x01\x02\x03\x04"
    cases = [
        frame(0x1, b"hel", fin=False, mask=key) + frame(0x9, b"p", mask=key) + frame(0x0, b"lo", mask=key),
        frame(0x1, b"x" * 200, mask=key, length_form=2),  # 64-bit length for 200 bytes: 1002
        frame(0x9, b"y" * 126, mask=key),  # control frame too long: 1002
        frame(0x8, struct.pack("!H", 1000) + b"\xff", mask=key),  # bad close reason: 1007
        frame(0x1, b"\xce\xbb\xff", mask=key),  # invalid UTF-8: 1007
    ]
    expected = [(["hello"], [b"p"], "more"), ([], [], ("error", 1002)), ([], [], ("error", 1002)),
                ([], [], ("error", 1007)), ([], [], ("error", 1007))]
    for stream, want in zip(cases, expected):
        assert ours(stream, client=False) == want
        assert theirs(stream, client=False) == want
