"""The local Twilio: a faithful fake of Twilio's side of a call, toward the bridge.

Two layers:

- `TwilioCaller.run_stream(stream, custom_parameters)` speaks Twilio's side of one
  bidirectional Media Stream over any `MessageStream` (in memory on a mock clock, or a real
  WebSocket). It streams the caller's microphone (a 160-byte µ-law frame every 20 ms, silence
  when not speaking, paced on absolute deadlines), plays the bridge's audio out in real time
  from a playout buffer, echoes marks when the audio before them has played (or at once on a
  `clear`), runs the scenario's caller steps, and records everything it saw in a `CallerReport`.
- `place_call(base_url, scenario, ...)` does what Twilio does for an inbound call over HTTP and
  WebSocket: the signed voice webhook, the TwiML, the signed stream upgrade, the stream, the
  `<Connect action>` request, and the TwiML that continues the call. As Twilio, it refuses a
  stream URL with a query string or a scheme other than `wss`; the one leniency is `ws://` when
  `public_url` itself is plain `http://` (a local-only setup real Twilio could not reach anyway).
  `<Say>`, `<Play>` and `<Pause>` are recorded as executed but not rendered as audio; with
  `spoken_verbs=True` a `<Say>` (and `<Pause>`) takes the time Twilio would spend on it before
  the next verb runs (a consent line before `<Connect>` delays the stream's start as it does on
  a real call).

Playout model: each media chunk is scheduled to play from `max(arrival, end of buffered audio)`
for `len / 8000` seconds; a `clear` truncates the chunk playing at that instant and drops
the rest. This is exact in continuous time (no 20 ms playout quantum), so under trio's
`MockClock` a mark queued behind 1 s of audio echoes exactly 1 s later.

Policy on bad frames from the bridge (unparseable, unknown event, wrong `streamSid`): recorded
in `CallerReport.protocol_errors`; by default the stream then fails as real Twilio fails it:
no `stop`, the socket is closed with 1002 (protocol error) and `ended_by` is
`"protocol_error"`. With `on_protocol_error="record"` the frame is only recorded.

Scenario step timing (see `voicebridge.peers.scenario`): a step's reference points are the
previous step's action time ("since the previous step") and its completion (a `say` completes
when its last frame has been sent; other actions complete at once); the first step's are the
stream start. `heard` fires `ms` after the later of "all received audio played" and the
previous step's completion, provided audio arrived since the previous step's action; `time`
fires `ms` after the previous step's completion; `playing` fires once `ms` of the current
answer has played after the previous step's completion. An answer is a run of playout with no
gap longer than `ANSWER_GAP_S` and no `clear` in it.

Why one module of this length: it plays all of Twilio's side of a call (webhook, TwiML, media
stream, marks, clear, playout timing, DTMF, the <Connect action>), and its timing model must
stay one piece to be faithful.
"""

from __future__ import annotations

import math
import re
import secrets
import urllib.parse
import uuid
from collections import deque
from functools import partial
from typing import Callable, Mapping

import attrs
import httpx
import trio
from trio_websocket import ConnectionRejected, HandshakeError, open_websocket_url
from twilio.request_validator import RequestValidator

from voicebridge.edges.protocol import twilio_media as tm
from voicebridge.edges.protocol._codec import b64_decode, b64_encode
from voicebridge.edges.protocol.errors import ProtocolError
from voicebridge.edges.transport import MessageStream, StreamClosed, TrioWebSocketStream, close_quietly

from voicebridge.peers import twiml
from voicebridge.peers.clips import load_clip
from voicebridge.peers.scenario import CallerStep, Scenario
from voicebridge.peers.wakeup import Wakeup as _Signal

FRAME_BYTES = 160  # 20 ms of µ-law at 8 kHz
FRAME_S = 0.020
BYTES_PER_S = 8000
SILENCE_BYTE = 0xFF
ANSWER_GAP_S = 0.3  # playout gaps shorter than this stay inside one answer
CLOSE_TIMEOUT_S = 5.0  # bound on sending `stop` and closing the socket
PROTOCOL_ERROR_CLOSE_CODE = 1002  # RFC 6455 "protocol error"
ENDED_BY = ("bridge", "caller", "timeout", "protocol_error")

_SID = {"CA": re.compile(r"CA[0-9a-fA-F]{32}"), "MZ": re.compile(r"MZ[0-9a-fA-F]{32}"),
        "AC": re.compile(r"AC[0-9a-fA-F]{32}")}
_SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES
_SILENCE_B64 = b64_encode(_SILENCE_FRAME)
_EPS = 1e-9


def new_sid(prefix: str) -> str:
    """A realistic 34-character Twilio SID: `prefix` (`CA`, `MZ`, `AC`) + 32 hex digits."""
    if prefix not in _SID:
        raise ValueError(f"unknown SID prefix {prefix!r}; expected one of {', '.join(_SID)}")
    return prefix + secrets.token_hex(16)


def _check_sid(prefix: str, sid: str | None) -> str:
    if sid is None:
        return new_sid(prefix)
    if not isinstance(sid, str) or not _SID[prefix].fullmatch(sid):
        raise ValueError(f"{prefix} SID must be {prefix!r} followed by 32 hex digits, got {str(sid)[:40]!r}")
    return sid


# -- what the caller observed ------------------------------------------------------------------


@attrs.define
class ReceivedChunk:
    """One `media` frame from the bridge. Times are seconds since the stream started."""

    index: int
    time: float  # arrival
    offset: int  # byte offset in the received stream
    audio: bytes = attrs.field(repr=lambda a: f"<{len(a)} bytes>")
    play_start: float  # when it started (or would start) playing
    answer: int  # index into CallerReport.answers, -1 for an empty chunk outside any answer
    clears_before: int  # how many `clear`s had arrived before it
    played_bytes: int  # how much of it played: reduced by a `clear` and by the end of the call

    @property
    def length(self) -> int:
        return len(self.audio)

    @property
    def play_end(self) -> float:
        return self.play_start + self.played_bytes / BYTES_PER_S


@attrs.define
class MarkRecord:
    name: str
    time_queued: float
    due: float  # when the audio queued before it finishes playing
    time_echoed: float | None = None
    echoed_by: str | None = None  # "playout", "empty" (nothing buffered: echoed at once), "clear"
    echo_sequence: int | None = None


@attrs.define
class ClearRecord:
    time: float
    bytes_dropped: int
    marks_flushed: tuple[str, ...]
    # media that arrived after this clear and before the bridge's next mark (stale audio of a
    # cancelled answer lands here; so does the first chunk of a new answer: compare bytes)
    chunks_before_next_mark: list[int] = attrs.field(factory=list)
    bytes_before_next_mark: int = 0
    window_open: bool = True


@attrs.define
class AnswerRecord:
    """A run of playout: one assistant answer as the caller heard it."""

    index: int
    start: float
    chunks: list[int] = attrs.field(factory=list)
    received_bytes: int = 0
    cleared: bool = False


@attrs.define
class StepRecord:
    index: int
    step: CallerStep
    action_time: float  # when the wait was satisfied and the action began
    done_time: float | None = None
    first_chunk: int | None = None  # say: the media chunks that carried the clip
    last_chunk: int | None = None
    speech_start: float | None = None  # say: send time of its first and last frame
    speech_end: float | None = None
    sequence: int | None = None  # dtmf/hangup: sequenceNumber of the message sent


@attrs.frozen
class DtmfRecord:
    time: float
    digit: str
    sequence: int


@attrs.frozen
class ProtocolErrorRecord:
    time: float
    message: str  # what was wrong; never the payload


@attrs.define
class CallerReport:
    """Everything the local caller saw and did; times are seconds since the stream started."""

    scenario: str
    call_sid: str
    stream_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = attrs.field(factory=dict)
    t0: float = 0.0  # trio.current_time() at the stream start
    received: list[ReceivedChunk] = attrs.field(factory=list)
    marks: list[MarkRecord] = attrs.field(factory=list)
    clears: list[ClearRecord] = attrs.field(factory=list)
    answers: list[AnswerRecord] = attrs.field(factory=list)
    steps: list[StepRecord] = attrs.field(factory=list)
    dtmf: list[DtmfRecord] = attrs.field(factory=list)
    protocol_errors: list[ProtocolErrorRecord] = attrs.field(factory=list)
    messages_sent: int = 0  # every frame sent, `connected` included
    last_sequence: int = 0
    media_frames_sent: int = 0
    media_bytes_sent: int = 0  # all caller audio sent, silence included
    speech_bytes_sent: int = 0  # clip bytes only (no silence, no padding)
    stop_sent: bool = False
    ended_by: str | None = None  # one of ENDED_BY
    end_time: float | None = None
    close_code: int | None = None
    close_reason: str = ""

    def received_audio(self) -> bytes:
        """Every byte of assistant audio the bridge sent, in order."""
        return b"".join(c.audio for c in self.received)

    def played_audio(self) -> bytes:
        """What the caller really heard: received audio minus what `clear` dropped or the end cut."""
        return b"".join(c.audio[: c.played_bytes] for c in self.received)

    @property
    def dropped_bytes(self) -> int:
        return sum(c.bytes_dropped for c in self.clears)

    def played_bytes_at(self, t: float, *, since: float | None = None) -> int:
        """Bytes played between `since` (default: the start) and `t`, seconds since the stream start."""
        lo = -math.inf if since is None else since
        total = 0
        for c in self.received:
            start, end = max(c.play_start, lo), min(c.play_end, t)
            if end > start:
                total += min(c.played_bytes, int((end - start) * BYTES_PER_S + 1e-6))
        return total

    def played_ms_at(self, t: float, *, since: float | None = None) -> float:
        """Milliseconds of audio played between `since` and `t` (the truncation check's clock)."""
        return self.played_bytes_at(t, since=since) / 8

    def answer_played_bytes(self, index: int) -> int:
        return sum(self.received[i].played_bytes for i in self.answers[index].chunks)

    def bytes_after_clear_matching(self, audio: bytes) -> int:
        """Bytes of chunks that arrived after a `clear` and occur in `audio` (e.g. the cancelled clip).

        The bench uses it to tell stale audio of a cancelled answer from a new answer.
        """
        return sum(c.length for c in self.received if c.clears_before and c.length and c.audio in audio)

    def echo_times(self) -> dict[str, float | None]:
        """Mark name -> echo time (last mark of that name wins)."""
        return {m.name: m.time_echoed for m in self.marks}


# -- the media-stream caller -------------------------------------------------------------------


class TwilioCaller:
    """Twilio's side of one bidirectional Media Stream, driven by a scenario's caller steps."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str | None = None,
        on_protocol_error: str = "close",
    ) -> None:
        if on_protocol_error not in ("close", "record"):
            raise ValueError("on_protocol_error must be 'close' or 'record'")
        if not scenario.max_s > 0:
            raise ValueError(f"scenario {scenario.name!r}: max_s must be positive")
        self.scenario = scenario
        self.call_sid = _check_sid("CA", call_sid)
        self.stream_sid = _check_sid("MZ", stream_sid)
        self.account_sid = _check_sid("AC", account_sid)
        self.on_protocol_error = on_protocol_error
        self._clips: dict[str, bytes] = {}
        for i, step in enumerate(scenario.caller):
            if step.say is not None and step.say not in self._clips:
                clip = load_clip(step.say)  # KeyError naming the known clips
                if clip.speaker != "caller":
                    raise ValueError(f"scenario {scenario.name!r} caller[{i}]: {step.say!r} is not a caller clip")
                self._clips[step.say] = clip.audio
        self.report = CallerReport(scenario.name, self.call_sid, self.stream_sid, self.account_sid)
        self._used = False
        self._stream: MessageStream | None = None
        self._t0 = 0.0
        self._seq = 0
        self._lock = trio.Lock()
        self._changed = _Signal()  # audio arrived or was cleared: re-check the step waits
        self._marks_changed = _Signal()
        self._pending: deque[tuple[float, MarkRecord]] = deque()
        self._play_end = -math.inf  # absolute time the buffered audio finishes playing
        self._received_bytes = 0
        self._answer: AnswerRecord | None = None
        self._last_audio_arrival = -math.inf
        self._mic = bytearray()
        self._mic_step: StepRecord | None = None
        self._mic_done: trio.Event | None = None
        self._cancel: trio.CancelScope | None = None

    # -- public

    async def run_stream(self, stream: MessageStream, custom_parameters: Mapping[str, str]) -> CallerReport:
        """Speak Twilio's side of the stream until the bridge closes it, the caller hangs up, or max_s."""
        if self._used:
            raise RuntimeError("a TwilioCaller runs one stream; make a new one per call")
        self._used = True
        params = dict(custom_parameters)
        if len(params) > tm.MAX_CUSTOM_PARAMETERS or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise ValueError(f"custom_parameters must map at most {tm.MAX_CUSTOM_PARAMETERS} strings to strings")
        self.report.custom_parameters = params
        self._stream = stream
        self._t0 = self.report.t0 = trio.current_time()
        try:
            with trio.fail_after(CLOSE_TIMEOUT_S):
                await self._send(tm.connected())
                self._seq = self.report.last_sequence = 1
                await self._send(tm.start(self.stream_sid, self.call_sid, self.account_sid, params, 1))
        except StreamClosed as exc:
            self._ended("bridge", exc)
        except trio.TooSlowError:
            self._ended("timeout")
            await self._close(1000)
        if self.report.ended_by is None:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._receiver)
                nursery.start_soon(self._mark_echoer)
                nursery.start_soon(self._script)
                nursery.start_soon(self._deadline)
        self._finalize()
        return self.report

    # -- sending

    def _rel(self, t: float | None = None) -> float:
        return (trio.current_time() if t is None else t) - self._t0

    async def _send(self, text: str) -> None:
        assert self._stream is not None
        await self._stream.send(text)
        self.report.messages_sent += 1

    async def _send_numbered(self, build: Callable[[int], str]) -> int:
        """Send one message carrying the next sequenceNumber; wire order = sequence order."""
        async with self._lock:
            seq = self._seq + 1
            await self._send(build(seq))
            self._seq = self.report.last_sequence = seq
            return seq

    async def _ticker(self) -> None:
        """One media frame every 20 ms on absolute deadlines: chunk n at t0 + n*20 ms."""
        chunk = 0
        while True:
            chunk += 1
            await trio.sleep_until(self._t0 + chunk * FRAME_S)
            frame, speech = self._mic_frame()
            payload = _SILENCE_B64 if speech == 0 else b64_encode(frame)
            ts = chunk * 20 - 20
            try:
                await self._send_numbered(
                    partial(tm.caller_media, self.stream_sid, chunk=chunk, timestamp_ms=ts, payload_b64=payload)
                )
            except StreamClosed as exc:
                self._ended("bridge", exc)
                return
            self.report.media_frames_sent += 1
            self.report.media_bytes_sent += len(frame)
            self.report.speech_bytes_sent += speech
            self._mic_frame_sent(chunk, speech)

    def _mic_frame(self) -> tuple[bytes, int]:
        """The next 20 ms of the microphone: speech (padded with silence) or silence; and its speech bytes."""
        if not self._mic:
            return _SILENCE_FRAME, 0
        take = bytes(self._mic[:FRAME_BYTES])
        return take + bytes([SILENCE_BYTE]) * (FRAME_BYTES - len(take)), len(take)

    def _mic_frame_sent(self, chunk: int, speech: int) -> None:
        if not speech:
            return
        del self._mic[:speech]
        step = self._mic_step
        if step is not None:
            now = self._rel()
            if step.first_chunk is None:
                step.first_chunk, step.speech_start = chunk, now
            if not self._mic:
                step.last_chunk, step.speech_end = chunk, now
                if self._mic_done is not None:
                    self._mic_done.set()

    # -- receiving and playout

    async def _receiver(self) -> None:
        assert self._stream is not None
        while True:
            try:
                text = await self._stream.receive()
            except StreamClosed as exc:
                self._ended("bridge", exc)
                return
            now = trio.current_time()
            try:
                event = tm.parse_bridge(text)
                if event.stream_sid != self.stream_sid:
                    raise ProtocolError("bridge->twilio", f"{type(event).__name__}: streamSid is not this stream's")
            except ProtocolError as exc:
                self.report.protocol_errors.append(ProtocolErrorRecord(self._rel(now), str(exc)))
                if self.on_protocol_error == "close":
                    self._ended("protocol_error")
                    await self._close(PROTOCOL_ERROR_CLOSE_CODE, "protocol error")
                    return
                continue
            try:
                if isinstance(event, tm.OutMedia):
                    self._on_media(now, b64_decode("bridge->twilio", "media.payload", event.payload_b64))
                elif isinstance(event, tm.OutMark):
                    await self._on_mark(now, event.name)
                else:
                    await self._on_clear(now)
            except StreamClosed as exc:
                self._ended("bridge", exc)
                return

    def _on_media(self, now: float, audio: bytes) -> None:
        rep = self.report
        n = len(audio)
        start = max(now, self._play_end)
        answer_index = -1
        if n:
            gap = start - self._play_end
            if self._answer is None or gap > ANSWER_GAP_S:
                self._answer = AnswerRecord(len(rep.answers), self._rel(start))
                rep.answers.append(self._answer)
            answer_index = self._answer.index
            self._answer.chunks.append(len(rep.received))
            self._answer.received_bytes += n
            self._play_end = start + n / BYTES_PER_S
            self._last_audio_arrival = now
        chunk = ReceivedChunk(
            index=len(rep.received), time=self._rel(now), offset=self._received_bytes, audio=audio,
            play_start=self._rel(start), answer=answer_index, clears_before=len(rep.clears), played_bytes=n,
        )
        rep.received.append(chunk)
        self._received_bytes += n
        if rep.clears and rep.clears[-1].window_open:
            rep.clears[-1].chunks_before_next_mark.append(chunk.index)
            rep.clears[-1].bytes_before_next_mark += n
        self._changed.fire()

    async def _on_mark(self, now: float, name: str) -> None:
        buffered = self._play_end > now
        record = MarkRecord(name, self._rel(now), self._rel(max(now, self._play_end)))
        self.report.marks.append(record)
        if self.report.clears:
            self.report.clears[-1].window_open = False
        if not buffered and not self._pending:
            await self._echo(record, "empty")
        else:
            self._pending.append((max(now, self._play_end), record))
            self._marks_changed.fire()

    async def _on_clear(self, now: float) -> None:
        rel_now = self._rel(now)
        dropped = 0
        for chunk in reversed(self.report.received):  # play times only grow along the list
            if chunk.played_bytes and chunk.play_end <= rel_now + _EPS:
                break  # played in full (or cut by an earlier clear): so was everything before it
            keep = 0
            if chunk.play_start < rel_now:
                keep = min(chunk.played_bytes, int((rel_now - chunk.play_start) * BYTES_PER_S + 1e-6))
            dropped += chunk.played_bytes - keep
            chunk.played_bytes = keep
        if self._play_end > now:
            self._play_end = now
        if self._answer is not None and dropped:
            self._answer.cleared = True
        self._answer = None
        flushed = [record for _, record in self._pending]
        self._pending.clear()
        self.report.clears.append(ClearRecord(self._rel(now), dropped, tuple(r.name for r in flushed)))
        self._marks_changed.fire()
        self._changed.fire()
        for record in flushed:
            await self._echo(record, "clear")

    async def _mark_echoer(self) -> None:
        """Echo each pending mark when the audio queued before it has played."""
        while True:
            if self._pending and self._pending[0][0] <= trio.current_time():
                _, record = self._pending.popleft()
                try:
                    await self._echo(record, "playout")
                except StreamClosed as exc:
                    self._ended("bridge", exc)
                    return
                continue
            await self._marks_changed.wait_until(self._pending[0][0] if self._pending else math.inf)

    async def _echo(self, record: MarkRecord, by: str) -> None:
        seq = await self._send_numbered(lambda s: tm.mark_echo(self.stream_sid, s, record.name))
        record.time_echoed, record.echoed_by, record.echo_sequence = self._rel(), by, seq

    # -- the caller's script

    async def _script(self) -> None:
        prev_action = prev_done = self._t0
        for i, step in enumerate(self.scenario.caller):
            await self._wait(step, prev_action, prev_done)
            action = trio.current_time()
            record = StepRecord(i, step, self._rel(action))
            self.report.steps.append(record)
            try:
                if step.say is not None:
                    self._mic_step, self._mic_done = record, trio.Event()
                    self._mic += self._clips[step.say]
                    if self._mic:
                        await self._mic_done.wait()
                    self._mic_step = self._mic_done = None
                elif step.dtmf is not None:
                    digit = step.dtmf
                    record.sequence = await self._send_numbered(partial(tm.dtmf, self.stream_sid, digit=digit))
                    self.report.dtmf.append(DtmfRecord(self._rel(), digit, record.sequence))
                elif step.hangup:
                    await self._hang_up("caller", record)
                    return
            except StreamClosed as exc:
                self._ended("bridge", exc)
                return
            done = trio.current_time()
            record.done_time = self._rel(done)
            prev_action, prev_done = action, done
        # after the last step: stay on the line (the ticker keeps streaming silence)

    async def _wait(self, step: CallerStep, prev_action: float, prev_done: float) -> None:
        while True:
            due = self._due(step, prev_action, prev_done)
            if due is not None and due <= trio.current_time():
                return
            await self._changed.wait_until(math.inf if due is None else due)

    def _due(self, step: CallerStep, prev_action: float, prev_done: float) -> float | None:
        """When the step's wait is satisfied given what is buffered now; None: needs more audio."""
        ms = step.ms / 1000
        if step.wait == "time":
            return prev_done + ms
        if step.wait == "heard":
            if self._last_audio_arrival < prev_action:
                return None
            return max(self._play_end, prev_done) + ms
        # "playing": ms of the current answer played after the previous step completed
        if self._answer is None:
            return None
        need = step.ms * 8  # bytes
        have = 0
        for i in self._answer.chunks:
            c = self.report.received[i]
            start = self._t0 + c.play_start
            end = start + c.played_bytes / BYTES_PER_S
            eff = max(start, prev_done)
            if eff >= end:
                continue
            avail = int(round((end - eff) * BYTES_PER_S))
            if have + avail >= need:
                return eff + (need - have) / BYTES_PER_S
            have += avail
        return None

    # -- ending

    async def _deadline(self) -> None:
        await trio.sleep_until(self._t0 + self.scenario.max_s)
        await self._hang_up("timeout", None)

    async def _hang_up(self, reason: str, step: StepRecord | None) -> None:
        """Twilio's hang-up: `stop`, then close the socket with 1000."""
        if self.report.ended_by is not None:
            return
        self._ended(reason)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                seq = await self._send_numbered(
                    lambda s: tm.stop(self.stream_sid, s, self.account_sid, self.call_sid)
                )
                self.report.stop_sent = True
                if step is not None:
                    step.sequence = seq
                    step.done_time = self._rel()
            except StreamClosed as exc:  # the bridge was already gone
                self.report.ended_by = "bridge"
                self.report.close_code, self.report.close_reason = exc.code, exc.reason
        await self._close(1000)

    async def _close(self, code: int, reason: str = "") -> None:
        assert self._stream is not None
        if self.report.close_code is None:
            self.report.close_code, self.report.close_reason = code, reason
        await close_quietly(self._stream, code, reason)
        if self._cancel is not None:
            self._cancel.cancel()

    def _ended(self, reason: str, exc: StreamClosed | None = None) -> None:
        """Record why the stream ended (the first reason wins) and stop every task."""
        assert reason in ENDED_BY
        if self.report.ended_by is None:
            self.report.ended_by = reason
            self.report.end_time = self._rel()
            if exc is not None:
                self.report.close_code, self.report.close_reason = exc.code, exc.reason
        if reason == "bridge" and self._cancel is not None:
            self._cancel.cancel()

    def _finalize(self) -> None:
        """Cut playout at the end of the call: audio still buffered was never heard."""
        rep = self.report
        if rep.end_time is None:
            rep.end_time = self._rel()
        for c in rep.received:
            if c.play_start + c.played_bytes / BYTES_PER_S > rep.end_time + _EPS:
                c.played_bytes = max(0, min(c.played_bytes, int((rep.end_time - c.play_start) * BYTES_PER_S + 1e-6)))


# -- the whole call over HTTP + WebSocket --------------------------------------------------------

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})
MAX_DOCUMENTS = 5  # TwiML documents fetched per call (incoming, action, redirects)
HTTP_TIMEOUT_S = 15.0  # Twilio's default webhook timeout
SAY_WORDS_PER_S = 2.5  # Twilio's <Say> voices speak about 150 words a minute
MAX_SPOKEN_S = 60.0  # bound on the time one verb is given


def spoken_seconds(verb: twiml.Verb) -> float:
    """How long Twilio spends on a `<Say>` (its words at ~150 a minute, times `loop`) or a `<Pause>`."""
    if isinstance(verb, twiml.Say):
        return min(MAX_SPOKEN_S, len(verb.text.split()) / SAY_WORDS_PER_S * max(1, verb.loop))
    if isinstance(verb, twiml.Pause):
        return min(MAX_SPOKEN_S, float(verb.length_s))
    return 0.0
API_VERSION = "2010-04-01"
DIRECTIONS = ("inbound", "outbound-api", "outbound-dial")


class CallError(ValueError):
    """`place_call` was asked for something it will not do (a non-loopback URL, a bad origin)."""


@attrs.frozen
class FetchedTwiml:
    """One TwiML request Twilio made: where, the answer, and the parsed document."""

    url: str  # the public URL Twilio signed
    local_url: str  # where the request really went
    status: int | None
    body: str
    twiml: twiml.TwimlResponse | None
    error: str | None = None


@attrs.define
class CallResult:
    call_sid: str
    incoming: FetchedTwiml | None = None
    stream_url: str | None = None  # as written in the TwiML
    local_stream_url: str | None = None
    stream_error: str | None = None  # the stream URL broke Twilio's rules, or the connection failed
    stream_refused: int | None = None  # HTTP status of a refused WebSocket upgrade
    report: CallerReport | None = None
    action: FetchedTwiml | None = None  # the <Connect action> request
    documents: list[FetchedTwiml] = attrs.field(factory=list)  # every TwiML request, in order
    executed: list[twiml.Verb] = attrs.field(factory=list)  # verbs Twilio ran, in order
    outcome: str = ""  # "hangup", "dial", "record", "reject", "ended" (no verbs left), "error"
    errors: list[str] = attrs.field(factory=list)

    @property
    def incoming_status(self) -> int | None:
        return self.incoming.status if self.incoming else None

    @property
    def incoming_twiml(self) -> twiml.TwimlResponse | None:
        return self.incoming.twiml if self.incoming else None

    @property
    def action_twiml(self) -> twiml.TwimlResponse | None:
        return self.action.twiml if self.action else None


class _UrlMap:
    """Maps the public URLs Twilio would call to the local bridge on loopback."""

    def __init__(self, base_url: str, public_url: str) -> None:
        base = urllib.parse.urlsplit(base_url)
        if base.scheme not in ("http", "https") or base.hostname not in LOOPBACK_HOSTS or base.path not in ("", "/"):
            raise CallError("base_url must be http://127.0.0.1:PORT or http://[::1]:PORT (loopback only)")
        pub = urllib.parse.urlsplit(public_url)
        if pub.scheme not in ("http", "https") or not pub.hostname or pub.path not in ("", "/") or pub.query:
            raise CallError("public_url must be an origin such as https://voice.example.com")
        self.base = f"{base.scheme}://{base.netloc}"
        self.ws_base = ("wss" if base.scheme == "https" else "ws") + f"://{base.netloc}"
        self.public = f"{pub.scheme}://{pub.netloc}"
        self._host = pub.hostname.lower()
        self._port = pub.port or (443 if pub.scheme == "https" else 80)

    def resolve(self, url: str, relative_to: str) -> str:
        return urllib.parse.urljoin(relative_to, url.strip())

    def _same_origin(self, parts: urllib.parse.SplitResult) -> bool:
        secure = parts.scheme in ("https", "wss")
        return (parts.hostname or "").lower() == self._host and (parts.port or (443 if secure else 80)) == self._port

    def http(self, public: str) -> str:
        parts = urllib.parse.urlsplit(public)
        if parts.scheme not in ("http", "https") or not self._same_origin(parts):
            raise CallError(f"{public[:200]!r} is not under {self.public}; the local Twilio only calls loopback")
        return self.base + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def ws(self, public: str) -> str:
        parts = urllib.parse.urlsplit(public)
        if not self._same_origin(parts):
            raise CallError(f"stream URL {public[:200]!r} is not under {self.public}; the local Twilio only calls loopback")
        return self.ws_base + (parts.path or "/")


def _check_ws_override(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or parts.hostname not in LOOPBACK_HOSTS:
        raise CallError("stream_url_override must be ws://127.0.0.1:PORT/... or ws://[::1]:PORT/...")
    return url


async def place_call(
    base_url: str,
    scenario: Scenario,
    *,
    public_url: str,
    auth_token: str | None,
    caller: TwilioCaller | None = None,
    direction: str = "inbound",
    stream_url_override: str | None = None,
    timeout_s: float = HTTP_TIMEOUT_S,
    spoken_verbs: bool = False,
) -> CallResult:
    """Place one call into the bridge at `base_url` the way Twilio does, and report what happened.

    Requests carry Twilio's parameters (plus `FromCountry`/`ToCountry`, as real Twilio sends
    geography the bridge must sign over too) and are signed (`X-Twilio-Signature`) for
    `public_url` when `auth_token` is given. Each request and the WebSocket connect are bounded by
    `timeout_s`, the stream by `scenario.max_s`, the whole call by their sum (`trio.TooSlowError`
    past it); only loopback addresses are contacted (`CallError` otherwise). `spoken_verbs`: each
    `<Say>`/`<Pause>` takes its spoken time (`spoken_seconds`) before the next verb.
    """
    if direction not in DIRECTIONS:
        raise CallError(f"direction must be one of {', '.join(DIRECTIONS)}")
    urls = _UrlMap(base_url, public_url)
    if stream_url_override is not None:
        _check_ws_override(stream_url_override)
    caller = caller or TwilioCaller(scenario)
    result = CallResult(call_sid=caller.call_sid)
    common = {
        "CallSid": caller.call_sid,
        "AccountSid": caller.account_sid,
        "From": scenario.from_number,
        "To": scenario.to_number,
        "Caller": scenario.from_number,
        "Called": scenario.to_number,
        "Direction": direction,
        "ApiVersion": API_VERSION,
        "FromCountry": "US",
        "ToCountry": "US",
    }
    signer = _Signer(auth_token)
    total_s = scenario.max_s + (MAX_DOCUMENTS + 2) * timeout_s + 2 * CLOSE_TIMEOUT_S
    if spoken_verbs:
        total_s += MAX_DOCUMENTS * 10 * MAX_SPOKEN_S
    with trio.fail_after(total_s):
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False, follow_redirects=False) as client:

            async def fetch(public: str, method: str, status: str) -> FetchedTwiml:
                params = {**common, "CallStatus": status}
                fetched = await _fetch_twiml(client, urls, signer, public, method, params)
                result.documents.append(fetched)
                if fetched.error:
                    result.errors.append(fetched.error)
                return fetched

            first_status = "in-progress" if direction == "outbound-api" else "ringing"
            doc_url = urls.public + "/incoming-call"
            doc = result.incoming = await fetch(doc_url, "POST", first_status)
            streamed = False
            while True:
                if doc.twiml is None:
                    result.outcome = "error"
                    return result
                next_doc: FetchedTwiml | None = None
                for verb in doc.twiml.verbs:
                    result.executed.append(verb)
                    if isinstance(verb, twiml.Connect):
                        if streamed:
                            result.errors.append("a second <Connect><Stream> in one call (one bidirectional stream per call)")
                            result.outcome = "error"
                            return result
                        streamed = True
                        await _stream(result, caller, verb, urls, signer, doc.url, stream_url_override, timeout_s)
                        if result.stream_error:
                            result.errors.append(result.stream_error)
                        if verb.action:
                            public = urls.resolve(verb.action, doc.url)
                            next_doc = result.action = await fetch(public, verb.method, "in-progress")
                            break
                    elif isinstance(verb, twiml.Redirect):
                        next_doc = await fetch(urls.resolve(verb.url, doc.url), verb.method, "in-progress")
                        break
                    elif isinstance(verb, (twiml.Hangup, twiml.Dial, twiml.Record, twiml.Reject)):
                        result.outcome = type(verb).__name__.lower()
                        return result
                    elif isinstance(verb, twiml.UnknownVerb):
                        result.errors.append(f"Twilio cannot run <{verb.tag}>")
                        result.outcome = "error"
                        return result
                    elif spoken_verbs:  # Say, Play, Pause: not rendered as audio; Twilio moves on once said
                        await trio.sleep(spoken_seconds(verb))
                if next_doc is None:
                    result.outcome = "ended"  # no verbs left: Twilio ends the call
                    return result
                if len(result.documents) >= MAX_DOCUMENTS:
                    result.errors.append(f"more than {MAX_DOCUMENTS} TwiML documents in one call")
                    result.outcome = "error"
                    return result
                doc = next_doc


class _Signer:
    def __init__(self, auth_token: str | None) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None

    def headers(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        if self._validator is None:
            return {}
        return {"X-Twilio-Signature": self._validator.compute_signature(url, dict(params))}


async def _fetch_twiml(
    client: httpx.AsyncClient, urls: _UrlMap, signer: _Signer, public: str, method: str, params: dict[str, str]
) -> FetchedTwiml:
    try:
        local = urls.http(public)
    except CallError as exc:
        return FetchedTwiml(public, "", None, "", None, str(exc))
    headers = {"User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
    try:
        if method == "GET":
            sep = "&" if "?" in public else "?"
            query = urllib.parse.urlencode(params)
            signed = public + sep + query
            response = await client.get(local + sep + query, headers={**headers, **signer.headers(signed, {})})
        else:
            response = await client.post(local, data=params, headers={**headers, **signer.headers(public, params)})
    except httpx.HTTPError as exc:
        return FetchedTwiml(public, local, None, "", None, f"{method} {public}: {type(exc).__name__}")
    body = response.text
    if response.status_code != 200:
        return FetchedTwiml(public, local, response.status_code, body, None, f"{method} {public}: HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("text/xml", "application/xml"):
        return FetchedTwiml(public, local, 200, body, None, f"{public}: content type {content_type!r} is not XML")
    try:
        doc = twiml.parse_twiml(body)
    except twiml.TwimlError as exc:
        return FetchedTwiml(public, local, 200, body, None, f"{public}: {exc}")
    error = f"{public}: TwiML problems: {'; '.join(doc.problems)}" if doc.problems else None
    return FetchedTwiml(public, local, 200, body, doc, error)


async def _stream(
    result: CallResult,
    caller: TwilioCaller,
    connect: twiml.Connect,
    urls: _UrlMap,
    signer: _Signer,
    doc_url: str,
    override: str | None,
    connect_timeout_s: float,
) -> None:
    """Open the media stream the way Twilio does and run the caller on it."""
    if connect.stream is None or not connect.stream.url:
        result.stream_error = "<Connect> has no <Stream url>"
        return
    written = connect.stream.url
    if "://" not in written:  # relative: resolved against the document, on wss (ws for an http origin)
        resolved = urllib.parse.urljoin(doc_url, written)
        written = ("wss" if resolved.startswith("https:") else "ws") + resolved[resolved.index("://"):]
    result.stream_url = written
    parts = urllib.parse.urlsplit(written)
    allowed = ("wss", "ws") if urls.public.startswith("http://") else ("wss",)  # ws: local http setups only
    if parts.scheme not in allowed:
        result.stream_error = f"stream URL scheme must be wss, got {parts.scheme!r} (Twilio error 31920)"
        return
    if parts.query or written.endswith("?"):
        result.stream_error = "stream URL must not have a query string; use <Parameter> (Twilio error 31920)"
        return
    try:
        local = override or urls.ws(written)
    except CallError as exc:
        result.stream_error = str(exc)
        return
    result.local_stream_url = local
    headers = [(b"x-twilio-signature", v.encode()) for v in signer.headers(written, {}).values()]
    try:
        async with open_websocket_url(
            local, extra_headers=headers, connect_timeout=connect_timeout_s, disconnect_timeout=CLOSE_TIMEOUT_S
        ) as ws:
            result.report = await caller.run_stream(TrioWebSocketStream(ws), connect.stream.custom_parameters)
    except ConnectionRejected as exc:
        result.stream_refused = exc.status_code
        result.stream_error = f"WebSocket upgrade refused with HTTP {exc.status_code} (Twilio error 31920)"
    except HandshakeError as exc:
        if result.report is None:
            result.stream_error = f"WebSocket connection failed: {type(exc).__name__} (Twilio error 31920)"
