"""Recorded calls: one JSONL line per WebSocket message on either socket of a call.

Line format (`t` in seconds since the Twilio `start` message; a line recorded before it has a
negative `t`):

    {"t": 1.234, "peer": "twilio", "dir": "in", "msg": {...}}
    {"t": 1.240, "peer": "realtime", "conn": 1, "dir": "out", "msg": {...}}
    {"t": 9.000, "peer": "realtime", "conn": 1, "dir": "close", "by": "peer", "code": 1006}

`dir` is from the bridge's side: `in` = received by the bridge, `out` = sent by it, `close` =
the socket ended, `by` the `peer` (the bridge saw it close or break) or the `bridge` (it closed
the socket itself); only the first close of a socket is recorded. `conn` numbers the Realtime
connections of the call (a reconnect opens the next one). A frame that is not JSON is kept as
`"raw"` (its first 2000 characters) instead of `"msg"`.

The first line describes the recording: `{"t": 0, "peer": "meta", "dir": "info", "version": ...,
"call_sid": ..., "wall_clock": ..., "settings": {...}}` with the call settings in effect
(timeouts, audio format, the job) and the wall-clock time the call started (ISO-8601 with its
offset: a job's dates depend on it), so a replay runs the bridge as it was, on that day.

Not recorded: keys (they travel in headers, which are not messages); the single-use stream token
in `start.customParameters.token`, replaced by "<redacted>"; Twilio's `connected` message, which
precedes `start`; and the Realtime session handshake (`session.created`, `session.update`,
`session.updated`), which happens before a connection is handed to the call. A replayer
sends `connected` and answers the handshake itself. A file may be gzip-compressed
(`.jsonl.gz`). Recordings hold the caller's audio: they are made only when asked for
(`VOICEBRIDGE_RECORD_DIR`) and never logged.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import logging
import math
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

import attrs
import trio

from voicebridge.edges.transport import MessageStream, StreamClosed

log = logging.getLogger("voicebridge.edges.recording")

REDACTED = "<redacted>"
RAW_CHARS = 2000
PEERS = ("twilio", "realtime")
DIRECTIONS = ("in", "out", "close")
CLOSED_BY = ("peer", "bridge")


def redact(peer: str, direction: str, msg: Any) -> Any:
    """`msg` with the stream token of a Twilio `start` replaced by "<redacted>" (a copy; others as is)."""
    if peer == "twilio" and direction == "in" and isinstance(msg, dict) and msg.get("event") == "start":
        start = msg.get("start")
        params = start.get("customParameters") if isinstance(start, dict) else None
        if isinstance(params, dict) and "token" in params:
            msg = copy.deepcopy(msg)
            msg["start"]["customParameters"]["token"] = REDACTED
    return msg


class CallRecorder:
    """Collects a call's messages; times are fixed once the stream's `start` arrives.

    Lines added before `started()` are held and written with negative times. A write error
    (disk full) stops the recording with one warning; it never breaks the call.
    """

    def __init__(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self.meta = meta or {}
        self._t0: float | None = None
        self._early: list[tuple[float, dict[str, Any]]] = []
        self._file: IO[str] | None = None
        self._failed = False

    def started(self, now: float) -> None:
        """Fix time zero (the Twilio `start`); held lines are written."""
        if self._t0 is None:
            self._t0 = now
            self._flush_early()

    def add(self, peer: str, direction: str, text: str | None, *, conn: int | None = None,
            code: int | None = None, by: str | None = None) -> None:
        """Record one message (`text`) or, with `direction="close"`, a socket's end (`by`, `code`)."""
        now = trio.current_time()
        line: dict[str, Any] = {"peer": peer}
        if conn is not None:
            line["conn"] = conn
        line["dir"] = direction
        if text is not None:
            try:
                line["msg"] = redact(peer, direction, json.loads(text))
            except ValueError:
                line["raw"] = text[:RAW_CHARS]
        if by is not None:
            line["by"] = by
        if direction == "close":
            line["code"] = code
        if self._t0 is None:
            self._early.append((now, line))
            return
        self._write(now, line)

    def _flush_early(self) -> None:
        early, self._early = self._early, []
        for now, line in early:
            self._write(now, line)

    def _write(self, now: float, line: dict[str, Any]) -> None:
        if self._failed:
            return
        assert self._t0 is not None
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "w", encoding="utf-8")
                self._file.write(json.dumps({"t": 0, "peer": "meta", "dir": "info", **self.meta},
                                            separators=(",", ":")) + "\n")
            self._file.write(json.dumps({"t": round(now - self._t0, 4), **line}, separators=(",", ":")) + "\n")
        except OSError as exc:
            self._failed = True
            log.warning("call recording stopped: %s", type(exc).__name__,
                        extra={"event": "recording_failed", "error": str(exc)[:200]})
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # the lines written so far are on disk already
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Write what is held (a call that never started counts from its first line) and close."""
        if self._t0 is None and self._early:
            self._t0 = self._early[0][0]
            self._flush_early()
        self._close_file()

    def wrap(self, stream: MessageStream, peer: str, conn: int | None = None) -> "RecordingStream":
        return RecordingStream(stream, self, peer, conn)


@attrs.define
class RecordingStream:
    """A MessageStream that records what passes through it, and how it ended."""

    inner: MessageStream
    recorder: CallRecorder
    peer: str
    conn: int | None = None
    closed: bool = False

    async def send(self, text: str) -> None:
        self.recorder.add(self.peer, "out", text, conn=self.conn)
        await self.inner.send(text)

    def try_send_nowait(self, *texts: str) -> bool:
        """The inner stream's no-wait send, when it has one; what it sent is recorded (False: nothing sent)."""
        fast = getattr(self.inner, "try_send_nowait", None)
        if fast is None or not fast(*texts):
            return False
        for text in texts:
            self.recorder.add(self.peer, "out", text, conn=self.conn)
        return True

    async def receive(self) -> str:
        try:
            text = await self.inner.receive()
        except StreamClosed as exc:
            if not self.closed:
                self.closed = True
                self.recorder.add(self.peer, "close", None, conn=self.conn, code=exc.code, by="peer")
            raise
        self.recorder.add(self.peer, "in", text, conn=self.conn)
        return text

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.recorder.add(self.peer, "close", None, conn=self.conn, code=code, by="bridge")
        await self.inner.aclose(code, reason)


# -- reading ---------------------------------------------------------------------------------


def read_recording(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a recording (plain or gzip), each a dict, meta line first.

    A malformed line raises ValueError naming `file:line` and what is wrong; so does a file
    that cannot be read or decompressed.
    """
    for _, line in read_recording_lines(path):
        yield line


def read_recording_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """As `read_recording`, with each line's number in the file."""
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    n = 0
    seen = False
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")) as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
                problem = _line_problem(line, first=not seen)
                if problem is not None:
                    raise ValueError(f"{path}:{n}: {problem}")
                seen = True
                yield n, line
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}:{n + 1}: cannot read: {exc}") from None
    if not seen:
        raise ValueError(f"{path}:1: empty recording (expected the meta line)")


def _line_problem(line: Any, *, first: bool) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(line, dict):
        return "expected a JSON object"
    for key in ("t", "peer", "dir"):
        if key not in line:
            return f"missing {key!r}"
    t = line["t"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return f"'t' must be a number of seconds, got {str(t)[:40]!r}"
    peer, direction = line["peer"], line["dir"]
    if peer == "meta":
        if not first:
            return "a meta line may only be the first line"
        if direction != "info":
            return "the meta line's dir must be 'info'"
        if not isinstance(line.get("settings", {}), dict):
            return "the meta line's 'settings' must be an object"
        return None
    if first:
        return "the first line must be the meta line (peer 'meta')"
    if peer not in PEERS:
        return f"unknown peer {str(peer)[:40]!r} (expected twilio or realtime)"
    if direction not in DIRECTIONS:
        return f"unknown dir {str(direction)[:40]!r} (expected in, out or close)"
    conn = line.get("conn")
    if peer == "realtime" and (isinstance(conn, bool) or not isinstance(conn, int) or conn < 1):
        return "a realtime line needs 'conn', the connection number (1, 2, ...)"
    if peer == "twilio" and conn is not None:
        return "a twilio line has no 'conn'"
    if direction == "close":
        code = line.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            return "'code' must be a WebSocket close code or null"
        if line.get("by", "peer") not in CLOSED_BY:
            return "'by' must be 'peer' or 'bridge'"
        return None
    if "msg" in line:
        if not isinstance(line["msg"], dict):
            return "'msg' must be a JSON object"
    elif not isinstance(line.get("raw"), str):
        return "a message line needs 'msg' (an object) or 'raw' (a string)"
    return None
