"""Replay, part 3: running a recording against the real daemon, and the `voicebridge replay` command."""

from __future__ import annotations


import copy
import gc
import json
import logging
import math
import sys
import tempfile
import urllib.parse
from functools import partial
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable

import attrs
import trio

from voicebridge.config import Config
from voicebridge.peers.wakeup import Wakeup as _Signal
from voicebridge.peers.replay.compare import ReplayReport, compare
from voicebridge.peers.replay.plan import (
    CLOSE_TIMEOUT_S,
    DEFAULT_TOLERANCE_S,
    GRACE_S,
    HTTP_TIMEOUT_S,
    MAX_CONCURRENT,
    OUTCOME_WAIT_S,
    REPLAY_API_KEY,
    REPLAY_PUBLIC_URL,
    Cue,
    Plan,
    Recording,
    RecordingError,
    load_recording,
    plan_replay,
)
from voicebridge.peers.replay.server import ReplayRealtimeServer, _Socket



def replay_config(config: Config, recording: Recording, *, realtime_url: str, db_path: Path) -> Config:
    """The daemon's settings for a replay: the user's, with the recording's call settings, on loopback."""
    return attrs.evolve(
        config, host="127.0.0.1", port=0, public_url=REPLAY_PUBLIC_URL, realtime_url=realtime_url,
        openai_api_key=REPLAY_API_KEY, twilio_auth_token=None, allow_unsigned=True, db_path=db_path,
        record_dir=None, order_webhook_url=None, order_webhook_secret=None, drain_timeout_s=1.0,
        **recording.settings)


@attrs.define
class _Replayed:
    """A replay that has run; `finish()` compares (CPU work, best done once no call is running)."""

    report: ReplayReport
    plan: Plan
    got: dict[str, _Socket]
    t0: float
    tolerance_s: float

    def finish(self) -> ReplayReport:
        if "twilio" in self.got:  # the stream ran: what the bridge sent can be compared
            compare(self.plan, self.got, self.t0, self.tolerance_s, self.report)
            self.report.compared = True
        return self.report


async def replay_recording(recording: Recording, config: Config, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
                           grace_s: float = GRACE_S) -> ReplayReport:
    """Replay one recording against an in-process daemon on loopback and compare (see the module doc)."""
    return (await _run_replay(recording, config, tolerance_s=tolerance_s, grace_s=grace_s)).finish()


class _StartTogether:
    """Calls start once every replay of a batch is set up: no replay's setup work (imports, plans,
    daemons starting) runs while another's call is being timed."""

    def __init__(self, n: int) -> None:
        self.waiting = n
        self.go = trio.Event()

    async def ready(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.go.set()
        await self.go.wait()


async def _run_replay(recording: Recording, config: Config, *, tolerance_s: float, grace_s: float,
                      start: _StartTogether | None = None) -> _Replayed:
    from voicebridge.business import SCHEMAS, build_job
    from voicebridge.daemon import Daemon, serve_daemon
    from voicebridge.ops.store import Store

    plan = plan_replay(recording)
    report = ReplayReport(recording.name, connections_recorded=plan.connections,
                          bridge_messages=sum(len(v) for v in plan.expected.values()))
    if recording.unapplied:
        report.notes.append(f"recorded settings not known here, not applied: {', '.join(recording.unapplied)}")
    activity = _Signal()
    server = ReplayRealtimeServer(activity)
    caller = _ReplayCaller(recording, plan, server, activity, tolerance_s=tolerance_s, grace_s=grace_s)
    outcomes: list[str] = []

    def observe(call_sid: str, kind: str, fields: dict[str, Any]) -> None:
        if kind == "ended" and call_sid == recording.call_sid:
            outcomes.append(str(fields["outcome"]))
            activity.fire()

    with tempfile.TemporaryDirectory(prefix="voicebridge-replay-") as tmp:
        async with trio.open_nursery() as nursery:
            realtime_url = await nursery.start(server.serve)
            cfg = replay_config(config, recording, realtime_url=realtime_url, db_path=Path(tmp) / "replay.sqlite3")
            store = await Store.open(cfg.db_path, schemas=SCHEMAS)
            try:
                daemon = Daemon(cfg, job=build_job(cfg), store=store, wall_clock=_recorded_clock(recording, caller))
                daemon.observers.append(observe)
                stop = trio.Event()
                async with trio.open_nursery() as daemon_nursery:
                    binds = await daemon_nursery.start(partial(serve_daemon, daemon, shutdown=stop))
                    try:
                        base = next(b for b in binds if b.startswith("http://"))
                        await caller.run(base, outcome=lambda: daemon.outcomes.get(recording.call_sid),
                                         ready=(start or _StartTogether(1)).ready)
                    finally:
                        stop.set()
            finally:
                await store.aclose()
            nursery.cancel_scope.cancel()
    report.error = caller.error
    report.outcome = outcomes[-1] if outcomes else None
    report.twiml = caller.twiml
    report.undelivered = caller.undelivered
    report.connections_replayed = len(server.connections)
    report.notes += [f"the replay Realtime server refused a {r}" for r in server.rejected] + caller.notes
    got = {"twilio": caller.twilio} if caller.twilio is not None else {}
    got.update({conn.name: conn for conn in server.connections})
    return _Replayed(report, plan, got, caller.t0, tolerance_s)


def _recorded_clock(recording: Recording, caller: "_ReplayCaller") -> Callable[[], datetime] | None:
    """The wall clock of the recorded call, running from when the replayed call starts (None: the real one)."""
    started = recording.wall_clock
    if started is None:
        return None

    def now() -> datetime:
        elapsed = trio.current_time() - caller.t0 if caller.t0 else 0.0
        return started + timedelta(seconds=max(0.0, elapsed))

    return now


class _ReplayCaller:
    """Twilio's side of the replay: webhook, media stream, recorded frames, `<Connect action>`.

    It also drives the replay Realtime server's connections, so that every recorded message is
    sent in the order the bridge received it, whichever socket it travels on.
    """

    def __init__(self, recording: Recording, plan: Plan, server: ReplayRealtimeServer, activity: _Signal, *,
                 tolerance_s: float, grace_s: float) -> None:
        self.recording = recording
        self.plan = plan
        self.server = server
        self.activity = activity
        self.tolerance_s = tolerance_s
        self.grace_s = grace_s
        self.twilio: _Socket | None = None
        self.t0 = 0.0
        self.error: str | None = None
        self.twiml: list[str] = []
        self.undelivered = 0
        self.notes: list[str] = []

    def _form(self, status: str) -> dict[str, str]:
        params = self.recording.custom_parameters
        return {"CallSid": self.recording.call_sid, "AccountSid": self.recording.account_sid,
                "From": params.get("From", ""), "To": params.get("To", ""), "Caller": params.get("From", ""),
                "Called": params.get("To", ""), "Direction": params.get("Direction", "inbound"),
                "CallStatus": status, "ApiVersion": "2010-04-01"}

    async def run(self, base: str, *, outcome: Callable[[], str | None],
                  ready: Callable[[], Awaitable[None]]) -> None:
        import httpx

        from voicebridge.peers import twiml

        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, trust_env=False, follow_redirects=False) as client:
            await ready()
            doc = await self._fetch(client, base, "/incoming-call", "ringing")
            if doc is None:
                return
            connect = next((v for v in doc.verbs if isinstance(v, twiml.Connect)), None)
            if connect is None or connect.stream is None:
                self.error = "the TwiML for /incoming-call has no <Connect><Stream>"
                return
            stream_url = urllib.parse.urlsplit(connect.stream.url)
            public = urllib.parse.urlsplit(REPLAY_PUBLIC_URL)
            if stream_url.scheme != "wss" or stream_url.hostname != public.hostname:
                self.error = f"the stream URL {connect.stream.url[:100]!r} is not wss:// on {public.hostname}"
                return
            token = connect.stream.custom_parameters.get("token")
            local = "ws" + base[len("http"):] + stream_url.path
            await self._stream(local, token)
            if connect.action is not None:  # as Twilio: asked as soon as the stream is over
                action = urllib.parse.urlsplit(urllib.parse.urljoin(REPLAY_PUBLIC_URL + "/incoming-call",
                                                                    connect.action))
                known = outcome() is not None
                after = await self._fetch(client, base, action.path, "in-progress")
                if after is not None:
                    self.twiml = [type(v).__name__ for v in after.verbs]
                if not known:
                    self.notes.append("the daemon had not finished the call when Twilio asked how to continue it "
                                      "(the <Connect action> request), so its answer could not depend on the outcome")
        with trio.move_on_after(OUTCOME_WAIT_S):  # for the report: the call's outcome in the daemon
            while outcome() is None:
                await self.activity.wait_until(trio.current_time() + 0.1)

    async def _fetch(self, client: Any, base: str, path: str, status: str) -> Any:
        import httpx

        from voicebridge.peers import twiml

        try:
            response = await client.post(base + path, data=self._form(status))
        except httpx.HTTPError as exc:
            self.error = f"POST {path}: {type(exc).__name__}"
            return None
        if response.status_code != 200:
            self.error = f"POST {path}: HTTP {response.status_code}"
            return None
        try:
            return twiml.parse_twiml(response.text)
        except twiml.TwimlError as exc:
            self.error = f"POST {path}: {exc}"
            return None

    async def _stream(self, url: str, token: str | None) -> None:
        from trio_websocket import (ConnectionClosed, ConnectionRejected, DisconnectionTimeout, HandshakeError,
                                    open_websocket_url)

        from voicebridge.edges.protocol import twilio_media as tm

        try:
            async with open_websocket_url(url, connect_timeout=HTTP_TIMEOUT_S, disconnect_timeout=CLOSE_TIMEOUT_S,
                                          max_message_size=4 * 1024 * 1024) as ws:
                twilio = self.twilio = _Socket("twilio", ws, self.activity)
                twilio.ready.set()

                async def read() -> None:
                    while True:
                        try:
                            text = await ws.get_message()
                        except ConnectionClosed as exc:
                            twilio.ended(exc.reason)
                            return
                        twilio.got(text)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    await twilio.send(tm.connected())
                    self.t0 = trio.current_time()
                    end = self.t0 + self.recording.last_t + self.grace_s
                    with trio.move_on_at(end):
                        await self._dispatch(token)
                        await self._wait_all_closed()
                    for sock in [twilio, *self.server.connections]:
                        await sock.close()
                    nursery.cancel_scope.cancel()
        except DisconnectionTimeout:
            self.notes.append(f"the daemon did not answer the media stream's close within {CLOSE_TIMEOUT_S:g} s")
        except ConnectionRejected as exc:
            self.error = f"the media stream WebSocket was refused with HTTP {exc.status_code}"
        except HandshakeError as exc:
            self.error = f"cannot open the daemon's media stream: {type(exc).__name__}"

    async def _dispatch(self, token: str | None) -> None:
        """Send every cue at its time, in order, each after the bridge messages it followed."""
        for cue in self.plan.cues:
            due = self.t0 + cue.t
            await trio.sleep_until(due)
            target = await self._ready(cue, due + self.tolerance_s)
            if target is None:
                self.undelivered += cue.action == "send"
                continue
            if cue.action == "abort":
                await target.abort()
            elif cue.action == "close":
                await target.close(cue.code or 1000)
            else:
                text = cue.text or ""
                if cue.start:
                    text = _with_token(text, token)
                if not await target.send(text):
                    self.undelivered += 1
                elif cue.stop:  # Twilio's hang-up: `stop`, then the socket closes
                    await target.close(1000)

    async def _ready(self, cue: Cue, deadline: float) -> _Socket | None:
        """The cue's socket once it is open and the bridge has sent what came before (bounded)."""
        while True:
            sock = self.twilio if cue.socket == "twilio" else self.server.connection(int(cue.socket.split("#")[1]))
            if sock is not None and (sock.closed.is_set() or sock.closed_by_us):
                return None  # gone: what was left to send to it cannot be delivered
            waited = trio.current_time() >= deadline
            if sock is not None and sock.ready.is_set() and (sock.controls >= cue.gate or waited):
                return sock
            if waited:
                return None
            await self.activity.wait_until(deadline)

    async def _wait_all_closed(self) -> None:
        while True:
            socks = [s for s in [self.twilio, *self.server.connections] if s is not None]
            if all(s.closed.is_set() or s.closed_by_us for s in socks):
                return
            await self.activity.wait_until(math.inf)


def _with_token(text: str, token: str | None) -> str:
    msg = json.loads(text)
    start = msg.get("start") if isinstance(msg, dict) else None
    if not isinstance(start, dict):
        return text
    start = msg["start"] = copy.deepcopy(start)
    params: dict[str, Any] = start["customParameters"] if isinstance(start.get("customParameters"), dict) else {}
    if token is not None:
        params["token"] = token
    else:
        params.pop("token", None)
    start["customParameters"] = params
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)



# -- the command ----------------------------------------------------------------------------------


async def replay_all(recordings: list[Recording], config: Config, *, tolerance_s: float,
                     grace_s: float = GRACE_S) -> list[ReplayReport]:
    """Replay several recordings at once (each with its own daemon and peers); reports in order.

    Up to MAX_CONCURRENT at a time, their calls starting together. The comparisons run once every
    call is over, and the loaded recordings are kept out of the garbage collector's way meanwhile:
    CPU pauses would otherwise delay the real-time sending of the calls still running.
    """
    runs: list[_Replayed] = []
    gc.collect()
    gc.freeze()
    try:
        for first in range(0, len(recordings), MAX_CONCURRENT):
            batch = recordings[first:first + MAX_CONCURRENT]
            start = _StartTogether(len(batch))
            done: list[_Replayed | None] = [None] * len(batch)

            async def one(n: int, recording: Recording, done: list[_Replayed | None], start: _StartTogether) -> None:
                done[n] = await _run_replay(recording, config, tolerance_s=tolerance_s, grace_s=grace_s, start=start)

            async with trio.open_nursery() as nursery:
                for n, recording in enumerate(batch):
                    nursery.start_soon(one, n, recording, done, start)
            runs += [run for run in done if run is not None]
    finally:
        gc.unfreeze()
    return [run.finish() for run in runs]


def render_json(reports: list[ReplayReport], tolerance_s: float) -> dict[str, Any]:
    return {"tolerance_s": tolerance_s, "ok": all(r.ok for r in reports),
            "differences": sum(len(r.differences) for r in reports),
            "files": [r.to_json() for r in reports]}


def run_replay_command(config: Config, files: list[Path], *, json_out: bool, tolerance_s: float) -> int:
    """`voicebridge replay FILE...`: 0 when no recording differs, 1 otherwise, 2 for unreadable input."""
    if not (math.isfinite(tolerance_s) and tolerance_s >= 0):
        print("voicebridge replay: --tolerance must be a number of seconds >= 0", file=sys.stderr)
        return 2
    recordings: list[Recording] = []
    errors: list[str] = []
    for path in files:
        try:
            recordings.append(load_recording(path))
        except RecordingError as exc:
            errors.append(str(exc))
    if errors:
        for error in errors:
            print(f"voicebridge replay: {error}", file=sys.stderr)
        return 2
    from voicebridge.business import build_job

    build_job(config)  # a bad business file stops here with one line (cli: MenuError/BusinessError, exit 2)
    logging.basicConfig(level=logging.ERROR, format="  [%(levelname)s] %(name)s: %(message)s")
    longest = max(r.last_t for r in recordings)
    print(f"voicebridge replay: {len(recordings)} recording(s), in real time (about {longest + 2:.0f} s)",
          file=sys.stderr, flush=True)
    reports = trio.run(partial(replay_all, recordings, config, tolerance_s=tolerance_s))
    if json_out:
        print(json.dumps(render_json(reports, tolerance_s), indent=2))
    else:
        for report in reports:
            print(report.text())
    return 0 if all(r.ok for r in reports) else 1
