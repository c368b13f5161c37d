"""CPU per WebSocket frame: voicebridge's framer (`RawWebSocket`) against wsproto, same frames.

The frames are the bridge's real traffic: Twilio `media` events (20 ms of µ-law, masked, client
to server) parsed by the server side and `media` events framed back; Realtime audio deltas
(100 ms, unmasked) parsed by the client side and `input_audio_buffer.append` events framed and
masked toward the model. Parsing is timed from bytes in the buffer to text out (no sockets), so
the numbers are the framing cost alone. Run: python bench/ws_framing.py [--frames N] [--repeat R]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from typing import Callable

from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from voicebridge.edges.transport import RawWebSocket


def twilio_media(i: int) -> str:
    return json.dumps({"event": "media", "streamSid": "MZ" + "0" * 32, "sequenceNumber": str(i),
                       "media": {"track": "inbound", "chunk": str(i), "timestamp": str(20 * i),
                                 "payload": base64.b64encode(os.urandom(160)).decode()}})


def realtime_delta(i: int) -> str:
    return json.dumps({"type": "response.output_audio.delta", "event_id": f"event_{i}", "response_id": "resp_1",
                       "item_id": "item_1", "output_index": 0, "content_index": 0,
                       "delta": base64.b64encode(os.urandom(800)).decode()})


def encoded(texts: list[str], *, masked: bool) -> bytes:
    """The frames as the peer writes them (masked if the peer is a client)."""
    peer = RawWebSocket(client=masked)
    return b"".join(peer._frame(0x1, t.encode()) for t in texts)


def ours_parse(data: bytes, n: int, client: bool) -> None:
    ws = RawWebSocket(client=client, leftover=data, max_message_bytes=1 << 20)
    for _ in range(n):
        assert ws._parse() is not None


def wsproto_parse(data: bytes, n: int, client: bool) -> None:
    conn = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
    conn.receive_data(data)
    got = sum(1 for ev in conn.events() if isinstance(ev, TextMessage))
    assert got == n


def ours_send(texts: list[str], client: bool) -> None:
    ws = RawWebSocket(client=client)
    for t in texts:
        ws._frame(0x1, t.encode("utf-8"))


def wsproto_send(texts: list[str], client: bool) -> None:
    conn = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
    for t in texts:
        conn.send(TextMessage(data=t))


def best_us(fn: Callable[[], None], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.frames
    media = [twilio_media(i) for i in range(n)]
    deltas = [realtime_delta(i) for i in range(n // 5)]
    media_in = encoded(media, masked=True)  # Twilio is the client: its frames are masked
    deltas_in = encoded(deltas, masked=False)  # the Realtime service is the server
    rows = [
        ("server: parse Twilio media (masked, ~%d B)" % len(media[0]),
         lambda: ours_parse(media_in, n, False), lambda: wsproto_parse(media_in, n, False), n),
        ("server: frame media back", lambda: ours_send(media, False), lambda: wsproto_send(media, False), n),
        ("client: parse Realtime deltas (~%d B)" % len(deltas[0]),
         lambda: ours_parse(deltas_in, len(deltas), True), lambda: wsproto_parse(deltas_in, len(deltas), True),
         len(deltas)),
        ("client: frame and mask appends", lambda: ours_send(media, True), lambda: wsproto_send(media, True), n),
    ]
    print("| frames | RawWebSocket µs/frame | wsproto µs/frame | wsproto / ours |")
    print("|---|---|---|---|")
    for name, ours, theirs, count in rows:
        a, b = best_us(ours, count, args.repeat), best_us(theirs, count, args.repeat)
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.1f}× |")


if __name__ == "__main__":
    main()
