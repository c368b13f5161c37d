"""Several processes on one database, with REAL processes: `voicebridge serve` run as a subprocess.

Two daemons share one SQLite file: a call's webhook on one and its stream on the other completes,
and a stream token used on one is refused on the other. `VOICEBRIDGE_WORKERS=2` runs two workers
behind one port under a supervisor that talks to systemd (here: a datagram socket we read as
NOTIFY_SOCKET): READY once both serve, WATCHDOG while both are healthy, a `kill -9`ed worker
started again while a call on the other worker goes on, and SIGTERM drains them all.

Everything is on loopback with free ports; every wait is bounded; every process started is
killed at the end (its whole process group, workers included).
"""

from __future__ import annotations

import contextlib

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import AsyncIterator

import attrs
import httpx
import pytest
import trio
import trio_websocket
from twilio.request_validator import RequestValidator

from voicebridge.edges.protocol import twilio_media as tw
from voicebridge.edges.security import StreamTokens, stream_token_secret
from voicebridge.edges.transport import TrioWebSocketStream
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import TwilioCaller, new_sid, place_call

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers and /proc: Linux")

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voicebridge-test.invalid"
STREAM_SIGNATURE = RequestValidator(TOKEN).compute_signature("wss://voicebridge-test.invalid/media-stream", {})
START_S = 40.0  # a daemon (or all workers) serving, on a loaded 2-core machine


@attrs.define
class Served:
    process: trio.Process
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media-stream"

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]


def serve_env(db: Path, port: int, realtime_url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("VOICEBRIDGE_", "OPENAI_", "TWILIO_", "ORDER_", "NOTIFY_", "WATCHDOG_"))}
    return {**base, "OPENAI_API_KEY": "test-key", "OPENAI_REALTIME_URL": realtime_url, "PUBLIC_URL": PUBLIC,
            "TWILIO_AUTH_TOKEN": TOKEN, "VOICEBRIDGE_DB": str(db), "VOICEBRIDGE_HOST": "127.0.0.1",
            "VOICEBRIDGE_PORT": str(port), "VOICEBRIDGE_LOG_FORMAT": "text", "TRANSFER_NUMBER": "+15550001111",
            "PYTHONUNBUFFERED": "1", **extra}


async def wait_ready(served: Served) -> None:
    """GET /readyz until it says ready (bounded); fail with the daemon's output if it exits."""
    with trio.fail_after(START_S):
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as http:
            while True:
                if served.process.returncode is not None:
                    pytest.fail(f"voicebridge serve exited ({served.process.returncode}):\n{served.output()}")
                with contextlib.suppress(httpx.HTTPError):  # not listening yet: poll again until the deadline
                    if (await http.get(served.base + "/readyz")).status_code == 200:
                        return
                await trio.sleep(0.1)


@asynccontextmanager
async def serving(tmp_path: Path, name: str, env: dict[str, str], *, ready: bool = True) -> AsyncIterator[Served]:
    """`voicebridge serve` in its own process group; the group is killed when the block ends."""
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process([sys.executable, "-m", "voicebridge", "serve"], env=env,
                                                   cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
    served = Served(process, int(env["VOICEBRIDGE_PORT"]), log)
    try:
        if ready:
            await wait_ready(served)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group already exited by itself
            os.killpg(process.pid, signal.SIGKILL)
        with trio.move_on_after(10):
            await process.wait()


@asynccontextmanager
async def realtime_peer(scenario: str) -> AsyncIterator[tuple[RealtimePeer, str]]:
    peer = RealtimePeer(load_scenario(scenario))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_realtime_peer, peer))
        yield peer, url
        nursery.cancel_scope.cancel()


async def start_stream(url: str, call_sid: str, params: dict[str, str]) -> int:
    """Open a media stream and send `connected` + `start`; the close code the bridge answers with."""
    async with trio_websocket.open_websocket_url(url, extra_headers=[(b"x-twilio-signature", STREAM_SIGNATURE.encode())]) as ws:
        await ws.send_message(tw.connected())
        await ws.send_message(tw.start(new_sid("MZ"), call_sid, new_sid("AC"), params))
        with trio.fail_after(15):
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                return int(exc.reason.code or 0)


async def call_row(db: Path, call_sid: str) -> tuple[bool, str | None]:
    store = await Store.open(db)
    try:
        return await store.call_outcome(call_sid)
    finally:
        await store.aclose()


async def outcome(db: Path, call_sid: str) -> str | None:
    """The call's recorded outcome, waiting (bounded) for the process that ran it to record its end."""
    with trio.move_on_after(10):
        while (found := (await call_row(db, call_sid))[1]) is None:
            await trio.sleep(0.05)
        return found
    return None


# -- two daemons, one database -------------------------------------------------------------------


async def test_webhook_on_one_daemon_and_stream_on_the_other_completes(tmp_path: Path) -> None:
    """Twilio's webhook reaches daemon A, its stream daemon B: B verifies A's token and runs the call,
    A answers the <Connect action> from the outcome B recorded (the caller pressed 0: dial the shop);
    the same token replayed to A afterwards is refused (1008) and no Realtime session is opened."""
    db = tmp_path / "vb.sqlite3"
    with trio.fail_after(120):
        async with realtime_peer("dtmf_transfer") as (peer, realtime_url):
            port_a, port_b = free_port(), free_port()
            long_ttl = {"VOICEBRIDGE_PREWARM_TTL_S": "60"}  # an unclaimed session closed sooner is not the TTL's doing
            async with serving(tmp_path, "a", serve_env(db, port_a, realtime_url, **long_ttl)) as a, \
                    serving(tmp_path, "b", serve_env(db, port_b, realtime_url, **long_ttl)) as b:
                caller = TwilioCaller(load_scenario("dtmf_transfer"))
                result = await place_call(a.base, load_scenario("dtmf_transfer"), public_url=PUBLIC, auth_token=TOKEN,
                                          caller=caller, stream_url_override=b.ws)
                assert result.errors == [], (result.errors, b.output())
                assert result.outcome == "dial"
                assert "+15550001111" in result.action.body  # A read B's outcome ("transferred") from the database
                assert result.report is not None and result.report.received  # the greeting reached the caller
                assert await outcome(db, caller.call_sid) == "transferred"
                # A pre-warmed a session at the webhook; B, running the stream, opened its own. A saw the
                # call start elsewhere and closed its session within seconds, not after the 60 s TTL.
                assert len(peer.connections) == 2
                with trio.fail_after(5):
                    while any(c.closed_at is None for c in peer.connections):
                        await trio.sleep(0.05)
                async with httpx.AsyncClient(trust_env=False) as http:
                    a_metrics = (await http.get(a.base + "/metrics")).text
                    b_metrics = (await http.get(b.base + "/metrics")).text
                assert 'voicebridge_prewarm_total{result="unclaimed"} 1.0' in a_metrics
                assert 'voicebridge_prewarm_total{result="miss"} 1.0' in b_metrics
                sessions = len(peer.connections)
                params = dict(result.report.custom_parameters)
                assert params["token"].startswith("v1.") and params["business"] == "default"
                assert await start_stream(a.ws, caller.call_sid, params) == 1008
                assert len(peer.connections) == sessions  # the refused replay cost no Realtime session


async def test_a_token_redeemed_on_one_daemon_is_refused_on_the_other(tmp_path: Path) -> None:
    """Any process with the deployment's key verifies a token; the database makes it single-use for all."""
    db = tmp_path / "vb.sqlite3"
    tokens = StreamTokens(stream_token_secret(None, TOKEN))  # what every daemon derives from TWILIO_AUTH_TOKEN
    with trio.fail_after(120):
        async with realtime_peer("silent_caller") as (peer, realtime_url):
            port_a, port_b = free_port(), free_port()
            async with serving(tmp_path, "a", serve_env(db, port_a, realtime_url)) as a, \
                    serving(tmp_path, "b", serve_env(db, port_b, realtime_url)) as b:
                call_sid = new_sid("CA")
                params = {"token": tokens.mint(call_sid), "business": "default"}
                async with trio.open_nursery() as nursery:
                    caller = TwilioCaller(load_scenario("silent_caller"), call_sid=call_sid)
                    async with trio_websocket.open_websocket_url(
                            a.ws, extra_headers=[(b"x-twilio-signature", STREAM_SIGNATURE.encode())]) as ws:
                        nursery.start_soon(caller.run_stream, TrioWebSocketStream(ws), params)
                        with trio.fail_after(15):  # A redeemed it: the call is recorded and its session open
                            while (await call_row(db, call_sid))[0] is False or not peer.connections:
                                await trio.sleep(0.05)
                        sessions = len(peer.connections)
                        assert await start_stream(b.ws, call_sid, params) == 1008
                        assert len(peer.connections) == sessions  # B opened no Realtime session for it
                        nursery.cancel_scope.cancel()
                assert "stream refused: reused" in b.output()


# -- workers under a supervisor ------------------------------------------------------------------


class NotifyListener:
    """A stand-in for systemd: collects sd_notify datagrams on a socket given as NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.sock.bind(str(self.path))
        task_status.started()
        with self.sock:
            while True:
                data = await self.sock.recv(4096)
                for line in data.decode().splitlines():
                    self.messages.append((trio.current_time(), line))

    def seen(self, message: str, since: float = 0.0) -> int:
        return sum(1 for t, m in self.messages if m == message and t >= since)

    async def wait_for(self, message: str, *, since: float = 0.0, timeout: float = START_S) -> None:
        with trio.fail_after(timeout):
            while not self.seen(message, since):
                await trio.sleep(0.05)


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (its workers), from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def server_side_pid(client_port: int, server_port: int, pids: set[int]) -> int | None:
    """Which of `pids` holds the accepted end of our connection from `client_port` (via /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == server_port and int(f[2].rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{f[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


async def workers_of(served: Served, n: int) -> set[int]:
    with trio.fail_after(START_S):
        while len(pids := children(served.process.pid)) != n:
            await trio.sleep(0.05)
    return pids


async def test_supervisor_notifies_restarts_a_killed_worker_and_drains(tmp_path: Path) -> None:
    """Two workers, one port. systemd hears READY=1 once both serve and WATCHDOG=1 while both are
    healthy. A call runs on one worker while the other is killed with SIGKILL: the call completes
    (the caller pressed 0: transferred), the supervisor starts a new worker, and the watchdog pings
    come back. SIGTERM: STOPPING=1, every worker drains and exits, the supervisor exits 0."""
    db = tmp_path / "vb.sqlite3"
    notify = NotifyListener(tmp_path / "notify.sock")
    tokens = StreamTokens(stream_token_secret(None, TOKEN))
    with trio.fail_after(150):
        async with realtime_peer("dtmf_transfer") as (peer, realtime_url), trio.open_nursery() as nursery:
            await nursery.start(notify.run)
            port = free_port()
            env = serve_env(db, port, realtime_url, VOICEBRIDGE_WORKERS="2", NOTIFY_SOCKET=str(notify.path),
                            WATCHDOG_USEC="2000000", VOICEBRIDGE_DRAIN_TIMEOUT_S="5")
            async with serving(tmp_path, "supervisor", env, ready=False) as sup:
                await notify.wait_for("READY=1")
                first = await workers_of(sup, 2)
                await wait_ready(sup)
                await notify.wait_for("WATCHDOG=1")

                # a call on one worker ...
                call_sid = new_sid("CA")
                caller = TwilioCaller(load_scenario("dtmf_transfer"), call_sid=call_sid)
                params = {"token": tokens.mint(call_sid), "business": "default"}
                async with trio_websocket.open_websocket_url(
                        sup.ws, extra_headers=[(b"x-twilio-signature", STREAM_SIGNATURE.encode())]) as ws:
                    done = trio.Event()

                    async def run_call() -> None:
                        await caller.run_stream(TrioWebSocketStream(ws), params)
                        done.set()

                    nursery.start_soon(run_call)
                    with trio.fail_after(10):
                        while (holder := server_side_pid(ws.local.port, port, first)) is None:
                            await trio.sleep(0.02)
                    # ... while the other one is killed
                    other = (first - {holder}).pop()
                    killed_at = trio.current_time()
                    os.kill(other, signal.SIGKILL)
                    with trio.fail_after(60):
                        await done.wait()
                report = caller.report
                assert report.ended_by is not None and report.received, sup.output()
                assert [d.digit for d in report.dtmf] == ["0"]
                assert await outcome(db, call_sid) == "transferred"
                assert holder in children(sup.process.pid)  # the call's worker was never touched
                # whichever worker answers the scrape shows every worker's counts
                async with httpx.AsyncClient(trust_env=False) as http:
                    for _ in range(6):  # a new connection each time: both workers answer some
                        scraped = (await http.get(sup.base + "/metrics", headers={"Connection": "close"})).text
                        assert 'voicebridge_calls_total{outcome="transferred"} 1.0' in scraped
                        assert 'voicebridge_prewarm_total{result="miss"} 1.0' in scraped  # no webhook: nothing pre-warmed

                # the supervisor starts a new worker; pings resume once both are healthy again
                second = await workers_of(sup, 2)
                assert holder in second and other not in second
                await notify.wait_for("STATUS=2 of 2 workers ready", since=killed_at)
                await notify.wait_for("WATCHDOG=1", since=trio.current_time())
                assert "exited (killed by SIGKILL); starting it again" in sup.output(tail=10**7)
                # no watchdog ping from the moment a worker was down until both were ready again
                after = [m for t, m in notify.messages if t >= killed_at]
                down = after.index("STATUS=1 of 2 workers ready")
                up = after.index("STATUS=2 of 2 workers ready", down)
                assert "WATCHDOG=1" not in after[down:up]
                await wait_ready(sup)

                # SIGTERM with a call live: STOPPING=1, the call is ended as `shutdown` at the drain
                # deadline (5 s here; this call would run 10 s), every worker exits, the supervisor exits 0
                call_sid = new_sid("CA")
                caller = TwilioCaller(load_scenario("dtmf_transfer"), call_sid=call_sid)
                params = {"token": tokens.mint(call_sid), "business": "default"}
                async with trio_websocket.open_websocket_url(
                        sup.ws, extra_headers=[(b"x-twilio-signature", STREAM_SIGNATURE.encode())]) as ws:
                    nursery.start_soon(caller.run_stream, TrioWebSocketStream(ws), params)
                    with trio.fail_after(15):
                        while (await call_row(db, call_sid))[0] is False:
                            await trio.sleep(0.05)
                    sigterm_at = trio.current_time()
                    sup.process.send_signal(signal.SIGTERM)
                    await notify.wait_for("STOPPING=1", timeout=10)
                    with trio.fail_after(30):
                        code = await sup.process.wait()
                assert code == 0, sup.output()
                assert trio.current_time() - sigterm_at >= 4.5  # the live call was given the drain time
                assert await outcome(db, call_sid) == "shutdown"
                assert children(sup.process.pid) == set()
                assert not any(alive(pid) for pid in second)
            nursery.cancel_scope.cancel()
