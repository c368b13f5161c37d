"""Greeting latency: stream start → the caller's first audio, with and without a webhook gap.

The real daemon (in process, on loopback) against a Realtime service scripted here with the
delays of issue 13: the WebSocket handshake answers after --connect-ms; every event takes
--owd-ms to cross the network each way; the service applies events one at a time in order
(`session.update` in --update-ms, so it is acknowledged 150 ms after it is sent by default) and
sends the first audio delta --delta-ms after applying `response.create` (300 ms after it is sent). The caller POSTs
`/incoming-call` (which starts the pre-warm), waits --gap-ms (the time Twilio takes to fetch
the TwiML and open the stream), opens /media-stream, sends `connected` + `start` and times the
first `media` frame. Run it from a tree to measure that tree:

    python bench/greeting.py --gaps 0,100,1000 --calls 5
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from voicebridge.config import Config
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.edges.protocol import twilio_media as tw
from voicebridge.edges.transport import RawWebSocket, StreamClosed, ws_accept_value, ws_connect
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.ops.store import Store
from voicebridge.peers import realtime_events as ev


async def realtime_service(args: argparse.Namespace, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def one(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        key = re.search(rb"(?im)^sec-websocket-key: *(\S+)", head)
        assert key is not None
        await trio.sleep(args.connect_ms / 1000)  # TLS, routing, model load: the handshake is slow
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              b"Sec-WebSocket-Accept: " + ws_accept_value(key.group(1).decode()).encode() + b"\r\n\r\n")
        sock = stream.socket.detach()
        import socket as _socket

        ws = RawWebSocket(_socket.socket(fileno=sock), leftover=head.partition(b"\r\n\r\n")[2])
        session = ev.session_object(ev.default_session("gpt-realtime"), session_id="sess_1", expires_at=0)
        owd = args.owd_ms / 1000
        out_send, out_recv = trio.open_memory_channel[tuple[float, str]](64)

        async def sender() -> None:  # each event reaches the bridge one network trip after it is made
            async for due, text in out_recv:
                await trio.sleep_until(due)
                await ws.send(text)

        def emit(event: dict[str, Any]) -> None:
            out_send.send_nowait((trio.current_time() + owd, json.dumps(event)))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                emit(ev.session_created("event_0", session))
                n = 0
                while True:  # in order, one at a time, each after its trip over the network
                    try:
                        msg = json.loads(await ws.receive())
                    except StreamClosed:
                        nursery.cancel_scope.cancel()
                        break
                    arrived = trio.current_time()
                    await trio.sleep_until(arrived + owd)
                    n += 1
                    if msg["type"] == "session.update":
                        await trio.sleep(args.update_ms / 1000)
                        emit(ev.session_updated(f"event_{n}", session))
                    elif msg["type"] == "response.create":
                        resp = ev.response_object("resp_1", conversation_id="conv_1", status="in_progress",
                                                  output=[], output_modalities=["audio"],
                                                  audio_format={"type": "audio/pcmu"}, voice="marin",
                                                  max_output_tokens="inf", metadata=None)
                        emit(ev.response_created(f"event_{n}a", resp))
                        await trio.sleep(args.delta_ms / 1000)
                        delta = base64.b64encode(b"\xff" * 800).decode()
                        emit(ev.output_audio_delta(f"event_{n}b", "resp_1", "item_1", 0, delta))
        finally:
            await ws.aclose()

    await trio.serve_listeners(one, listeners)


async def one_call(base: str, port: int, gap_s: float) -> float:
    call_sid = "CA" + "%032x" % int(time.time_ns())
    async with httpx.AsyncClient(base_url=base) as http:
        twiml = (await http.post("/incoming-call", data={"CallSid": call_sid, "From": "+15551230001",
                                                        "To": "+15559870000"})).text
    token = re.search(r'name="token" value="([^"]+)"', twiml)
    assert token is not None, twiml
    await trio.sleep(gap_s)
    ws = await ws_connect(f"ws://127.0.0.1:{port}/media-stream", [])
    try:
        await ws.send(tw.connected())
        t0 = trio.current_time()
        await ws.send(tw.start("MZ" + call_sid[2:], call_sid, "AC" + "0" * 32, {"token": token.group(1)}))
        first = ""
        while '"event":"media"' not in first:  # skip marks and other frames until the first audio
            first = (await ws.receive()).replace(" ", "")
        return (trio.current_time() - t0) * 1000
    finally:
        await ws.aclose()


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)  # the unsigned-call warnings: this harness sends no signatures
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            rt_port = await nursery.start(realtime_service, args)
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            config = Config(host="127.0.0.1", port=port, public_url="https://bench.invalid",
                            realtime_url=f"ws://127.0.0.1:{rt_port}/v1/realtime", openai_api_key="bench",
                            allow_unsigned=True, db_path=Path(tmp) / "g.sqlite3")
            store = await Store.open(config.db_path)
            daemon = Daemon(config, job=PizzaJob(load_menu(None), config.tax_rate_bp), store=store)
            stop = trio.Event()
            await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
            print(f"Realtime: handshake {args.connect_ms} ms; {args.owd_ms} ms each way; session.update applied in "
                  f"{args.update_ms} ms (acknowledged {2 * args.owd_ms + args.update_ms} ms after it is sent); first "
                  f"delta {args.delta_ms} ms after response.create is applied ({2 * args.owd_ms + args.delta_ms} ms "
                  f"after it is sent)")
            print("| gap webhook → stream start | first audio after start, median / max ms (n) |")
            print("|---|---|")
            for gap in [int(g) for g in args.gaps.split(",")]:
                ms = [await one_call(f"http://127.0.0.1:{port}", port, gap / 1000) for _ in range(args.calls)]
                print(f"| {gap} ms | {statistics.median(ms):.0f} / {max(ms):.0f} ({len(ms)}) |")
            stop.set()
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        await store.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaps", default="0,100,1000", help="ms between the webhook and the stream start")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--connect-ms", type=int, default=250)
    ap.add_argument("--owd-ms", type=int, default=60, help="one-way network delay, each direction")
    ap.add_argument("--update-ms", type=int, default=30, help="time the service takes to apply session.update")
    ap.add_argument("--delta-ms", type=int, default=180, help="time from applying response.create to the first delta")
    a = ap.parse_args()
    trio.run(main, a)
    sys.exit(0)
