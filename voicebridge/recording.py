"""Recorded calls: one JSONL line per WebSocket message on either socket of a call.

Line format (`t` in seconds since the Twilio `start` message; earlier messages, such as the
pre-warmed Realtime session's, have negative `t`):

    {"t": 1.234, "peer": "twilio", "dir": "in", "msg": {...}}
    {"t": 1.240, "peer": "realtime", "conn": 1, "dir": "out", "msg": {...}}
    {"t": 9.000, "peer": "realtime", "conn": 1, "dir": "close", "code": 1006}

`dir` is from the bridge's side: `in` = received by the bridge, `out` = sent by it. `conn`
numbers the Realtime connections of the call (a reconnect opens the next one). Keys never
appear (they travel in headers, which are not recorded); the single-use stream token in
`start.customParameters.token` is replaced by "<redacted>". A file may be gzip-compressed
(`.jsonl.gz`).

The first line describes the recording: `{"t": 0, "peer": "meta", "dir": "info", "version": ...,
"call_sid": ..., "settings": {...}}` with the call settings in effect (timeouts, audio format),
so a replay runs the bridge as it was. The Realtime session handshake (`session.created`,
`session.update`, `session.updated`) happens before a connection is handed to the call and is
not recorded: a replayer answers it itself.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import IO, Any, Iterator

import attrs
import trio

from .transport import MessageStream, StreamClosed

REDACTED = "<redacted>"


def redact(peer: str, direction: str, msg: Any) -> Any:
    if peer == "twilio" and direction == "in" and isinstance(msg, dict) and msg.get("event") == "start":
        params = (msg.get("start") or {}).get("customParameters")
        if isinstance(params, dict) and "token" in params:
            msg = json.loads(json.dumps(msg))
            msg["start"]["customParameters"]["token"] = REDACTED
    return msg


class CallRecorder:
    """Collects a call's messages; times are fixed once the stream's `start` arrives."""

    def __init__(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self.meta = meta or {}
        self._t0: float | None = None
        self._early: list[tuple[float, dict[str, Any]]] = []
        self._file: IO[str] | None = None

    def started(self, now: float) -> None:
        if self._t0 is None:
            self._t0 = now

    def add(self, peer: str, direction: str, text: str | None, *, conn: int | None = None,
            code: int | None = None) -> None:
        now = trio.current_time()
        line: dict[str, Any] = {"peer": peer}
        if conn is not None:
            line["conn"] = conn
        line["dir"] = direction
        if text is not None:
            try:
                line["msg"] = redact(peer, direction, json.loads(text))
            except ValueError:
                line["raw"] = text[:2000]
        if code is not None:
            line["code"] = code
        if self._t0 is None:
            self._early.append((now, line))
            return
        self._write(now, line)

    def _write(self, now: float, line: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
            self._file.write(json.dumps({"t": 0, "peer": "meta", "dir": "info", **self.meta},
                                        separators=(",", ":")) + "\n")
            early, self._early = self._early, []
            for t, l in early:
                self._write(t, l)
        assert self._t0 is not None
        self._file.write(json.dumps({"t": round(now - self._t0, 4), **line}, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is None and self._early:
            self._t0 = self._t0 if self._t0 is not None else self._early[0][0]
            self._write(*self._early.pop(0)) if self._early else None
        if self._file is not None:
            self._file.close()
            self._file = None

    def wrap(self, stream: MessageStream, peer: str, conn: int | None = None) -> "RecordingStream":
        return RecordingStream(stream, self, peer, conn)


@attrs.define
class RecordingStream:
    inner: MessageStream
    recorder: CallRecorder
    peer: str
    conn: int | None = None

    async def send(self, text: str) -> None:
        self.recorder.add(self.peer, "out", text, conn=self.conn)
        await self.inner.send(text)

    async def receive(self) -> str:
        try:
            text = await self.inner.receive()
        except StreamClosed as exc:
            self.recorder.add(self.peer, "close", None, conn=self.conn, code=exc.code)
            raise
        self.recorder.add(self.peer, "in", text, conn=self.conn)
        return text

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)


def read_recording(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a recording (plain or gzip), each a dict; a bad line raises ValueError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        assert isinstance(fh, io.TextIOBase)
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"{path.name}:{n}: not JSON ({exc})") from None
            if not isinstance(line, dict) or "t" not in line or "peer" not in line or "dir" not in line:
                raise ValueError(f"{path.name}:{n}: expected an object with t, peer and dir")
            yield line
