"""`voicebridge replay`: play the peers' side of a recorded call against the daemon, and compare.

A recording (`voicebridge.edges.recording`) holds every message of a call on both of its sockets.
The replay runs the real daemon in-process on 127.0.0.1, exactly as `voicebridge demo` does
(`Daemon` + `serve_daemon`, a temporary SQLite file, unsigned Twilio requests, a public https
origin mapped to the loopback port), with the call settings of the recording's meta line, no
webhook delivery and a local key. Its Realtime URL points at a replay Realtime server, which
answers each connection's handshake itself and then plays the recorded server events of that
connection; a replay caller plays Twilio: the voice webhook, the media stream with the recorded
frames (and a fresh stream token; `stop` is followed by the caller's close), and the
`<Connect action>` request as soon as the stream is over.

Recorded messages are sent at their recorded times since the stream's `start`, in the order
the bridge received them, and never before the bridge has sent, on the same socket, the control
messages it had sent before them in the recording (a reply waits for its request, a mark echo
for its mark). Such a wait is bounded by `tolerance_s`: a bridge that stopped sending does not
stall the replay, it shows up as differences. A recorded close by the peer closes the socket
then (code 1006: abruptly, a TCP reset).

What the bridge sent on each socket (Twilio, and each Realtime connection) is then compared with
the recording, message by message and in order, after dropping what legitimately varies
(`event_id`); on a Realtime socket, forwarded caller audio and control events are two streams
compared each in its own order (their interleaving is a matter of timing). Audio must match
byte for byte. A difference names the socket, the message's index among the bridge's messages
on that socket, and expected vs got (the type and the differing field, never a whole audio
payload). Times are compared too: a message sent more than `tolerance_s` from its recorded time
is a timing difference, and so is a truncation point (`audio_end_ms`, how much the caller had
heard: a measure of time) more than `tolerance_s` off. Not a difference: which 20 ms frame of
caller audio is the first or last one forwarded on a Realtime connection, for a frame (or a run
of identical frames) within `tolerance_s` of the connection's first or last recorded line;
those are counted as `boundary_frames`.

Everything is bounded: a replay ends at the recording's last time plus a grace period, whatever
the bridge does, and stops everything it started. Several recordings replay at once, their calls
starting together once all are set up, and are compared after every call is over.
"""

from __future__ import annotations

import contextlib

import binascii
import copy
import gc
import json
import logging
import math
import socket
import struct
import sys
import tempfile
import time
import urllib.parse
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import attrs
import trio

from voicebridge.config import Config
from voicebridge.edges.recording import read_recording_lines
from voicebridge.edges.transport import close_quietly
from voicebridge.peers.wakeup import Wakeup as _Signal

REPLAY_PUBLIC_URL = "https://voicebridge-replay.invalid"  # a reserved name: never resolves, never leaves the machine
REPLAY_API_KEY = "replay-local-key"  # what the bridge presents to the replay server; never a real key
REALTIME_PATH = "/v1/realtime"
DEFAULT_TOLERANCE_S = 0.25
GRACE_S = 5.0  # after the recording's last time, the replay ends whatever the bridge does
HTTP_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 3.0
OUTCOME_WAIT_S = 3.0  # how long the report waits for the daemon to record the call's outcome
MAX_CONCURRENT = 16  # recordings replayed at once
ALIGN_WINDOW = 400  # how far ahead the comparison looks to resynchronise after a missing or extra message
TEXT_DIFFERENCES = 50  # differences printed per file (all of them with --json)
AUDIO_FIELDS = frozenset({"payload", "audio", "delta"})
CLEAN_CLOSE_CODES = frozenset({1000, 1001})

# Meta `settings` key -> Config field: a replay runs the bridge with the recorded call settings.
SETTINGS: dict[str, str] = {
    "silence_timeout_s": "silence_timeout_s",
    "max_call_s": "max_call_s",
    "response_stall_timeout_s": "response_stall_timeout_s",
    "reconnect_budget_s": "reconnect_budget_s",
    "session_rotate_s": "session_rotate_s",
    "connect_timeout_s": "realtime_connect_timeout_s",
    "tax_rate_bp": "tax_rate_bp",
    "audio_format": "audio_format",
}
AUDIO_FORMATS = ("pcmu", "pcm16")


class RecordingError(ValueError):
    """A recording cannot be replayed; the message names `file:line`."""


# -- the recording, as the replay reads it -------------------------------------------------------


@attrs.frozen
class Recording:
    """A loaded recording: the meta line, every other line in order, and the call's identity."""

    path: Path
    meta: dict[str, Any]
    lines: tuple[dict[str, Any], ...]  # without the meta line
    call_sid: str
    stream_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    settings: dict[str, Any]  # Config field -> value
    unapplied: tuple[str, ...] = ()  # meta settings this version does not know

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def last_t(self) -> float:
        return max((float(line["t"]) for line in self.lines), default=0.0)

    def with_lines(self, lines: list[dict[str, Any]]) -> "Recording":
        """The same recording with other lines (tests alter recordings in memory)."""
        return attrs.evolve(self, lines=tuple(lines))


def load_recording(path: Path) -> Recording:
    """Read and check a recording; RecordingError names `file:line` and what is wrong."""
    meta: dict[str, Any] | None = None
    lines: list[dict[str, Any]] = []
    start: tuple[int, dict[str, Any]] | None = None
    try:
        for n, line in read_recording_lines(path):
            if line["peer"] == "meta":
                meta = line
                continue
            lines.append(line)
            msg = line.get("msg")
            if start is None and line["peer"] == "twilio" and line["dir"] == "in" and isinstance(msg, dict) \
                    and msg.get("event") == "start":
                start = (n, msg)
    except ValueError as exc:
        raise RecordingError(str(exc)) from None
    assert meta is not None  # read_recording_lines insists on it
    settings = _settings(path, meta)
    if start is None:
        raise RecordingError(f"{path}:2: no Twilio 'start' message received by the bridge: nothing to replay")
    n, msg = start
    body = msg.get("start")
    if not isinstance(body, dict):
        raise RecordingError(f"{path}:{n}: the 'start' message has no 'start' object")
    ids = {key: body.get(key) for key in ("callSid", "streamSid", "accountSid")}
    for key, value in ids.items():
        if not isinstance(value, str) or not value or len(value) > 64 or not value.replace("_", "").isalnum():
            raise RecordingError(f"{path}:{n}: start.{key} must be a SID (letters and digits)")
    params = body.get("customParameters") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        raise RecordingError(f"{path}:{n}: start.customParameters must map names to strings")
    return Recording(path=path, meta=meta, lines=tuple(lines), call_sid=str(ids["callSid"]),
                     stream_sid=str(ids["streamSid"]), account_sid=str(ids["accountSid"]),
                     custom_parameters=dict(params), settings=settings,
                     unapplied=tuple(sorted(set(meta.get("settings") or {}) - set(SETTINGS))))


def _settings(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    raw = meta.get("settings") or {}
    out: dict[str, Any] = {}
    for key, field in SETTINGS.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "audio_format":
            if value not in AUDIO_FORMATS:
                raise RecordingError(f"{path}:1: settings.audio_format must be one of {', '.join(AUDIO_FORMATS)}")
        elif key == "tax_rate_bp":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10_000:
                raise RecordingError(f"{path}:1: settings.tax_rate_bp must be whole basis points from 0 to 9999")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**7:
            raise RecordingError(f"{path}:1: settings.{key} must be a positive number of seconds")
        else:
            value = float(value)
        out[field] = value
    return out


# -- what to send, what to expect -----------------------------------------------------------------


def socket_name(line: dict[str, Any]) -> str:
    return "twilio" if line["peer"] == "twilio" else f"realtime#{line['conn']}"


def is_bulk_audio(socket: str, msg: Any) -> bool:
    """A bridge message that only carries audio (gates count the other, control, messages)."""
    if not isinstance(msg, dict):
        return False
    if socket == "twilio":
        return msg.get("event") == "media"
    return msg.get("type") == "input_audio_buffer.append"


@attrs.frozen
class Cue:
    """Something the peers do: send a recorded message, or close a socket, at a recorded time."""

    t: float
    socket: str
    action: str  # "send", "close" (a clean close with `code`), "abort" (the connection breaks)
    text: str | None = None
    code: int | None = None
    gate: int = 0  # control messages the bridge had sent on this socket before it, in the recording
    start: bool = False  # the Twilio `start`: the fresh stream token goes in
    stop: bool = False  # the Twilio `stop`: the caller hangs up (closes the socket) right after it


@attrs.frozen
class Expected:
    """A message the bridge sent (or its close of a socket) in the recording."""

    socket: str
    index: int
    t: float
    msg: dict[str, Any] | None
    raw: str | None = None
    close_code: int | None = None
    is_close: bool = False


@attrs.frozen
class Plan:
    cues: tuple[Cue, ...]
    expected: dict[str, tuple[Expected, ...]]
    spans: dict[str, tuple[float, float]]  # socket -> times of its first and last recorded line
    connections: int  # Realtime connections in the recording


def plan_replay(recording: Recording) -> Plan:
    """The peers' cues and the bridge's expected messages, per socket, from a recording."""
    cues: list[Cue] = []
    expected: dict[str, list[Expected]] = {}
    controls: dict[str, int] = {}
    peer_closed: set[str] = set()  # sockets the peer side closed (or the caller hung up on)
    spans: dict[str, tuple[float, float]] = {}
    connections = 0
    for line in recording.lines:
        sock = socket_name(line)
        direction = line["dir"]
        t = float(line["t"])
        first, last = spans.get(sock, (t, t))
        spans[sock] = (min(first, t), max(last, t))
        if line["peer"] == "realtime":
            connections = max(connections, int(line["conn"]))
        if direction == "out":
            msg = line.get("msg")
            exp = expected.setdefault(sock, [])
            exp.append(Expected(sock, len(exp), t, msg, line.get("raw")))
            if not is_bulk_audio(sock, msg):
                controls[sock] = controls.get(sock, 0) + 1
        elif direction == "in":
            msg = line.get("msg")
            text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False) if msg is not None else str(line["raw"])
            is_start = sock == "twilio" and isinstance(msg, dict) and msg.get("event") == "start"
            is_stop = sock == "twilio" and isinstance(msg, dict) and msg.get("event") == "stop"
            cues.append(Cue(t, sock, "send", text, gate=controls.get(sock, 0), start=is_start, stop=is_stop))
            if is_stop:
                peer_closed.add(sock)
        elif line.get("by", "peer") == "bridge":
            if sock not in peer_closed:  # after the peer's close, the bridge's own close is not seen
                exp = expected.setdefault(sock, [])
                exp.append(Expected(sock, len(exp), t, None, close_code=line.get("code"), is_close=True))
        else:
            code = line.get("code")
            action = "close" if code in CLEAN_CLOSE_CODES else "abort"
            cues.append(Cue(t, sock, action, code=code, gate=controls.get(sock, 0)))
            peer_closed.add(sock)
    return Plan(tuple(cues), {k: tuple(v) for k, v in expected.items()}, spans, connections)


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


# -- the replay ----------------------------------------------------------------------------------------


@attrs.frozen
class Difference:
    """One way the bridge's messages on a socket differ from the recording."""

    socket: str
    index: int  # the message's index among the recorded bridge messages on this socket (extra: where it came)
    kind: str  # "content", "missing", "extra", "timing"
    message: str
    t_expected: float | None = None
    t_got: float | None = None

    def line(self) -> str:
        t = self.t_expected if self.t_expected is not None else self.t_got
        at = f" ({t:.3f} s)" if t is not None else ""
        return f"{self.socket} #{self.index}{at}: {self.kind}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class ReplayReport:
    """The outcome of replaying one recording."""

    file: str
    bridge_messages: int = 0  # recorded bridge messages (and bridge closes) compared
    differences: list[Difference] = attrs.field(factory=list)
    error: str | None = None  # the replay itself failed (a webhook answered with an error, ...)
    compared: bool = False  # the stream ran and the bridge's messages were compared
    outcome: str | None = None  # the call's outcome in the daemon
    twiml: list[str] = attrs.field(factory=list)  # the verbs of the TwiML that continues the call
    connections_recorded: int = 0
    connections_replayed: int = 0
    undelivered: int = 0  # recorded peer messages that could not be sent (the socket was gone)
    boundary_frames: int = 0  # caller-audio frames forwarded on the other side of a connection's start or end
    max_skew_s: float = 0.0  # largest time difference of a matching message
    notes: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.compared and not self.differences

    def summary(self) -> str:
        if not self.compared:
            return f"{self.file}: replay failed: {self.error}"
        plural = "" if len(self.differences) == 1 else "s"
        twiml = "".join(f"<{v}>" for v in self.twiml) or "nothing"
        failed = f"; then the replay failed: {self.error}" if self.error is not None else ""
        return (f"{self.file}: {self.bridge_messages} bridge messages, {len(self.differences)} difference{plural} "
                f"(call outcome {self.outcome}; Twilio continues with {twiml}; largest time skew "
                f"{self.max_skew_s * 1000:.0f} ms){failed}")

    def text(self, limit: int = TEXT_DIFFERENCES) -> str:
        out = [self.summary()]
        out += [f"  {d.line()}" for d in self.differences[:limit]]
        if len(self.differences) > limit:
            out.append(f"  ... and {len(self.differences) - limit} more (--json lists them all)")
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["differences"] = [d.to_json() for d in self.differences]
        data["ok"] = self.ok
        return data


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
                daemon = Daemon(cfg, job=build_job(cfg), store=store)
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


# -- comparison ----------------------------------------------------------------------------------


@attrs.frozen
class _Item:
    t: float
    key: str
    tolerant: dict[str, float]
    msg: dict[str, Any] | None
    text: str | None  # raw, when not JSON
    is_close: bool
    close_code: int | None


def _normalise(msg: dict[str, Any] | None, raw: str | None, is_close: bool,
               code: int | None) -> tuple[str, dict[str, float]]:
    """The comparison key of a message (what legitimately varies dropped) and its time-like fields."""
    if is_close:
        return f"close:{code}", {}
    if msg is None:
        return "raw:" + (raw or ""), {}
    body = {k: v for k, v in msg.items() if k != "event_id"}
    tolerant: dict[str, float] = {}
    end = body.get("audio_end_ms")
    if body.get("type") == "conversation.item.truncate" and isinstance(end, (int, float)) and not isinstance(end, bool):
        tolerant["audio_end_ms"] = float(body.pop("audio_end_ms"))
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False), tolerant


def _expected_items(expected: tuple[Expected, ...]) -> list[_Item]:
    out = []
    for e in expected:
        key, tolerant = _normalise(e.msg, e.raw, e.is_close, e.close_code)
        out.append(_Item(e.t, key, tolerant, e.msg, e.raw, e.is_close, e.close_code))
    return out


def _observed_items(sock: Any, t0: float) -> list[_Item]:
    out = []
    for o in sock.received:
        msg = None
        if o.text is not None:
            with contextlib.suppress(ValueError):  # not JSON: compared as raw text below
                parsed = json.loads(o.text)
                msg = parsed if isinstance(parsed, dict) else None
        raw = o.text if msg is None else None
        key, tolerant = _normalise(msg, raw, o.is_close, o.close_code)
        out.append(_Item(o.t - t0, key, tolerant, msg, raw, o.is_close, o.close_code))
    return out


def align(expected: list[str], got: list[str], window: int = ALIGN_WINDOW) -> list[tuple[str, int, int]]:
    """Pair two message sequences in order: ("match"|"change", i, j), ("missing", i, j), ("extra", i, j).

    Greedy and linear: equal keys match; a lone replacement is a change; otherwise the nearest
    resynchronisation within `window` decides whether messages are missing or extra. `j` of a
    missing message (and `i` of an extra one) is where it would have been in the other sequence.
    """
    ops: list[tuple[str, int, int]] = []
    i = j = 0
    while i < len(expected) and j < len(got):
        if expected[i] == got[j]:
            ops.append(("match", i, j))
            i, j = i + 1, j + 1
            continue
        if i + 1 < len(expected) and j + 1 < len(got) and expected[i + 1] == got[j + 1]:
            ops.append(("change", i, j))
            i, j = i + 1, j + 1
            continue
        step: tuple[str, int] | None = None
        for k in range(1, window + 1):
            if i + k < len(expected) and expected[i + k] == got[j]:
                step = ("missing", k)
                break
            if j + k < len(got) and got[j + k] == expected[i]:
                step = ("extra", k)
                break
            if i + k >= len(expected) and j + k >= len(got):
                break
        if step is None:
            ops.append(("change", i, j))
            i, j = i + 1, j + 1
        elif step[0] == "missing":
            ops += [("missing", i + n, j) for n in range(step[1])]
            i += step[1]
        else:
            ops += [("extra", i, j + n) for n in range(step[1])]
            j += step[1]
    ops += [("missing", n, j) for n in range(i, len(expected))]
    ops += [("extra", i, n) for n in range(j, len(got))]
    return ops


def lanes(socket: str, items: list[_Item]) -> dict[str, list[int]]:
    """Positions of a socket's messages per lane, each compared in order on its own.

    On a Realtime socket the forwarded caller audio (paced by Twilio's frames) and the control
    events (driven by the model's events and the bridge's timers) are independent streams: how
    they interleave is a matter of timing, checked separately. Twilio's messages are one lane.
    """
    out: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        lane = "audio" if socket != "twilio" and is_bulk_audio(socket, item.msg) else "control"
        out.setdefault(lane, []).append(n)
    return out


def compare(plan: Plan, got: dict[str, Any], t0: float, tolerance_s: float, report: ReplayReport) -> None:
    """Fill `report` with the differences between the recorded and the replayed bridge messages."""
    sockets = sorted(set(plan.expected) | {name for name, sock in got.items() if sock.received},
                     key=lambda s: (s != "twilio", int(s.split("#")[1]) if "#" in s else 0))
    found: list[Difference] = []
    for name in sockets:
        exp = _expected_items(plan.expected.get(name, ()))
        obs = _observed_items(got[name], t0) if name in got else []
        span = plan.spans.get(name)
        exp_lanes, obs_lanes = lanes(name, exp), lanes(name, obs)
        for lane in sorted(set(exp_lanes) | set(obs_lanes)):
            ei, oi = exp_lanes.get(lane, []), obs_lanes.get(lane, [])

            def at(i: int, ei: list[int] = ei, n_exp: int = len(exp)) -> int:  # lane position -> socket index
                return ei[i] if i < len(ei) else n_exp

            ops = align([exp[i].key for i in ei], [obs[j].key for j in oi])
            for op, i, j in ops:
                if op == "match":
                    e, o = exp[ei[i]], obs[oi[j]]
                    skew = o.t - e.t
                    report.max_skew_s = max(report.max_skew_s, abs(skew))
                    if abs(skew) > tolerance_s:
                        found.append(Difference(
                            name, ei[i], "timing", f"{describe(e)}: sent at {o.t:.3f} s, recorded at {e.t:.3f} s "
                            f"({skew:+.3f} s; tolerance {tolerance_s:g} s)", e.t, o.t))
                    for field, value in e.tolerant.items():
                        other = o.tolerant.get(field, math.nan)
                        if not abs(other - value) <= tolerance_s * 1000:
                            found.append(Difference(
                                name, ei[i], "timing", f"{describe(e)}: {field} {other:g}, recorded {value:g} "
                                f"(more than {tolerance_s * 1000:g} ms apart)", e.t, o.t))
                elif op == "change":
                    found.append(Difference(name, ei[i], "content", content_difference(exp[ei[i]], obs[oi[j]]),
                                            exp[ei[i]].t, obs[oi[j]].t))
                elif op == "missing":
                    e = exp[ei[i]]
                    if lane == "audio" and _near_span([exp[k] for k in ei], i, span, tolerance_s):
                        report.boundary_frames += 1
                        continue
                    found.append(Difference(
                        name, ei[i], "missing", f"{describe(e)} was not sent (recorded at {e.t:.3f} s)", e.t, None))
                else:
                    o = obs[oi[j]]
                    if lane == "audio" and _near_span([obs[k] for k in oi], j, span, tolerance_s):
                        report.boundary_frames += 1
                        continue
                    found.append(Difference(
                        name, at(i), "extra", f"{describe(o)} sent at {o.t:.3f} s is not in the recording", None, o.t))
    report.differences += sorted(found, key=lambda d: (sockets.index(d.socket), d.index))


def _near_span(items: list[_Item], n: int, span: tuple[float, float] | None, tolerance_s: float) -> bool:
    """Whether unmatched caller audio `items[n]` may be a frame on the other side of its connection's start or end.

    Identical frames (a run of silence) cannot be told apart, so any frame of the run it is in
    counts: the run must come within `tolerance_s` of the connection's first or last recorded line.
    """
    if span is None:
        return False
    lo = hi = n
    while lo > 0 and items[lo - 1].key == items[n].key:
        lo -= 1
    while hi + 1 < len(items) and items[hi + 1].key == items[n].key:
        hi += 1
    first, last = span
    return items[lo].t <= first + tolerance_s or items[hi].t >= last - tolerance_s


def describe(item: _Item) -> str:
    """A short name for a message: its type and what identifies it (never its audio)."""
    if item.is_close:
        return f"close (code {item.close_code})"
    msg = item.msg
    if msg is None:
        return f"non-JSON frame of {len(item.text or '')} characters"
    if "event" in msg:  # Twilio
        kind = str(msg.get("event"))
        if kind == "media":
            return f"media ({_b64_size(_get(msg, 'media', 'payload'))})"
        if kind == "mark":
            return f"mark {str(_get(msg, 'mark', 'name'))[:80]!r}"
        return kind
    kind = str(msg.get("type"))
    if kind == "input_audio_buffer.append":
        return f"{kind} ({_b64_size(msg.get('audio'))})"
    if kind == "conversation.item.truncate":
        return f"{kind} of {msg.get('item_id')}"
    if kind == "response.create":
        purpose = _get(msg, "response", "metadata", "purpose")
        return f"{kind}" + (f" (purpose {purpose})" if purpose else "")
    if kind == "conversation.item.create":
        created: Any = msg.get("item") or {}
        return f"{kind} ({created.get('type')})" if isinstance(created, dict) else kind
    return kind


def _get(msg: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(msg, dict):
            return None
        msg = msg.get(key)
    return msg


def _b64_size(value: Any) -> str:
    try:
        return f"{len(binascii.a2b_base64(str(value), strict_mode=True))} bytes"
    except (binascii.Error, ValueError):
        return "not base64"


def content_difference(expected: _Item, got: _Item) -> str:
    """`expected X, got Y`, naming the first differing field; audio as a byte position, never whole."""
    a, b = describe(expected), describe(got)
    if expected.msg is None or got.msg is None or expected.is_close or got.is_close:
        return f"expected {a}, got {b}"
    kind_a = expected.msg.get("event", expected.msg.get("type"))
    kind_b = got.msg.get("event", got.msg.get("type"))
    if kind_a != kind_b:
        return f"expected {a}, got {b}"
    ea = {k: v for k, v in expected.msg.items() if k != "event_id"}
    eb = {k: v for k, v in got.msg.items() if k != "event_id"}
    found = _first_difference(ea, eb, "")
    if found is None:
        return f"{a}: differs"
    path, va, vb = found
    leaf = path.rsplit(".", 1)[-1].split("[")[0]
    if leaf in AUDIO_FIELDS and isinstance(va, str) and isinstance(vb, str):
        return f"{a}: {path}: {_audio_difference(va, vb)}"
    return f"{a}: {path}: expected {_short(va)}, got {_short(vb)}"


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else key
            if key not in a:
                return sub, "(absent)", b[key]
            if key not in b:
                return sub, a[key], "(absent)"
            found = _first_difference(a[key], b[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for n, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{n}]")
            if found is not None:
                return found
        if len(a) != len(b):
            return f"{path} length", len(a), len(b)
        return None
    return None if a == b and type(a) is type(b) else (path, a, b)


def _audio_difference(a: str, b: str) -> str:
    try:
        x, y = binascii.a2b_base64(a, strict_mode=True), binascii.a2b_base64(b, strict_mode=True)
    except (binascii.Error, ValueError):
        return f"audio differs (base64 of {len(a)} vs {len(b)} characters)"
    n = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    if n < min(len(x), len(y)):
        return f"audio differs at byte {n} of {len(x)} (expected 0x{x[n]:02x}, got 0x{y[n]:02x})"
    return f"audio length differs: expected {len(x)} bytes, got {len(y)} (equal up to byte {n})"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) or value != "(absent)" else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    from voicebridge.jobs.pizza.menu import load_menu

    load_menu(config.menu_path)  # a bad menu stops here with one line (cli: MenuError, exit 2)
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
