"""Replay, part 1: the recording as the replay reads it, and the plan of what to send and expect."""

from __future__ import annotations


import json
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from voicebridge.config import JOBS
from voicebridge.edges.recording import read_recording_lines


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
    "job": "job",
    "business": "business_path",  # a business file packaged with the job, by name
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
    wall_clock: datetime | None = None  # the business's "now" when the call started (a job's date and time)

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
                     unapplied=tuple(sorted(set(meta.get("settings") or {}) - set(SETTINGS))),
                     wall_clock=_wall_clock(path, meta))


def _wall_clock(path: Path, meta: dict[str, Any]) -> datetime | None:
    raw = meta.get("wall_clock")
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise RecordingError(f"{path}:1: wall_clock must be an ISO-8601 time with its UTC offset")
    return value


def _packaged_business(path: Path, name: Any, job: str) -> Path:
    """The packaged business file a recording names (`example_menu_es.toml`), as a path."""
    folder = resources.files(f"voicebridge.jobs.{job}") if job in JOBS else None
    if (folder is None or not isinstance(name, str) or not name.endswith(".toml") or "/" in name or "\\" in name
            or not (folder / name).is_file()):
        raise RecordingError(f"{path}:1: settings.business must name a business file packaged with the {job} job")
    return Path(str(folder / name))


def _settings(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    raw = meta.get("settings") or {}
    out: dict[str, Any] = {}
    for key, field in SETTINGS.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "job":
            if value not in JOBS:
                raise RecordingError(f"{path}:1: settings.job must be one of {', '.join(JOBS)}")
        elif key == "audio_format":
            if value not in AUDIO_FORMATS:
                raise RecordingError(f"{path}:1: settings.audio_format must be one of {', '.join(AUDIO_FORMATS)}")
        elif key == "business":
            value = _packaged_business(path, value, str(raw.get("job", "pizza")))
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
