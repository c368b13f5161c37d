"""run_call(): one Trio nursery per call.

Tasks of a call (all in the call's nursery; none outlives it):
- twilio_reader: Twilio frames -> caller audio to the model channel, marks/DTMF/stop to the flow;
- twilio_writer: the Twilio channel -> the Twilio socket (model audio, marks, clear);
- model_link: opens, configures, reads and (on a drop) reopens the Realtime session;
- model_writer: the model channel -> the current Realtime socket (caller audio, control events);
- timers: named deadlines the flow arms, fired back into the flow.
The flow (`voicebridge.engine.flow.CallFlow`) decides; tasks only move data and perform its effects.

Why one module of this length: a call's five tasks share its channels and its flow, and
performing each effect needs them all; the decisions themselves are in flow.py.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Protocol

import attrs
import trio

from voicebridge.edges import audio
from voicebridge.engine.effects import ArmTimer, Commit, DisarmTimer, Effect, Hangup, Notice, Rotate, SendCaller, SendModel, Transcript
from voicebridge.engine.flow import CallFlow, FlowSettings
from voicebridge.engine.job import CommitError, Committed, Job, JobPrompts, PrepareTool, ToolResult
from voicebridge.edges.protocol import realtime as rt
from voicebridge.edges.protocol import twilio_media as tw
from voicebridge.edges.protocol._codec import b64_decode, b64_encode
from voicebridge.edges.protocol.errors import ProtocolError
from voicebridge.edges.recording import CallRecorder
from voicebridge.edges.transport import MessageStream, StreamClosed, close_quietly

log = logging.getLogger("voicebridge.call")

# Realtime connector: opens a socket whose background tasks live in the given nursery.
Connector = Callable[[trio.Nursery], Awaitable[MessageStream]]

MODEL_CHANNEL = 256  # ~5 s of 20 ms frames before caller audio is dropped (late audio is worse than lost)
TWILIO_CHANNEL = 512
START_TIMEOUT_S = 10.0
HOLD_FRAMES = 250  # caller audio held while a rotation's new session opens (5 s of 20 ms frames)
LATENCY_SAMPLE_EVERY = 25  # one frame in 25 (every 0.5 s of caller audio) is timed through the bridge
FINISH_TIMEOUT_S = 10.0  # recording a call's end may not hang its handler (sockets, store)
RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
PREPARE_TIMEOUT_S = 5.0  # a tool's lookups (store, calendar) may not hold the call up longer
PREPARE_FAILED = ("The records cannot be checked right now. Apologise, and offer to connect the caller with a person "
                  "or to call back later.")


def utc_now() -> datetime:
    """The wall clock, UTC-aware (a CallSetup's default `wall_clock`)."""
    return datetime.now(timezone.utc)


class SetupError(Exception):
    """The Realtime session could not be opened or configured."""


class StreamRefused(Exception):
    """The `start` message failed the stream-token check; the reason is safe to log."""


@attrs.define
class CallHooks:
    """What a call reports to the rest of the daemon. Every hook is optional."""

    on_event: Callable[[str, str, dict[str, Any]], None] | None = None  # (call_sid, kind, fields): notices, transcripts
    on_started: Callable[[tw.Start], Awaitable[None]] | None = None
    # sid, role, text, item, position: where the line was spoken in the call (1, 2, ... by when its turn began)
    on_transcript: Callable[[str, str, str, str | None, int], Awaitable[None]] | None = None
    commit: Callable[[str, Any], Awaitable[Committed]] | None = None  # (sid, task): the job's commit, in the store
    on_ended: Callable[["CallResult"], Awaitable[None]] | None = None
    on_live: Callable[["Call"], None] | None = None  # the call is running (the daemon keeps it for shutdown)
    # The outcome is known: called before the Twilio socket closes, because Twilio asks the
    # <Connect action> (/stream-ended) what to do next the moment it does.
    on_outcome: Callable[[str, str], None] | None = None
    # A sampled forwarding latency: ("in" caller->model | "out" model->caller, seconds in the bridge).
    on_forward: Callable[[str, float], None] | None = None


class AudioTap(Protocol):
    """Where a call reports its audio for a recording of what was said and heard (edges/call_audio.py).

    Positions are the playout's (engine/playout.py): bytes of µ-law sent to Twilio so far. Every
    method is called from the call's tasks and must return quickly (no waiting on a disk).
    """

    def caller_audio(self, ulaw: bytes, timestamp_ms: int, now: float) -> None:
        """A caller media frame, with its Twilio timestamp, received at `now`."""

    def caller_hears(self, position: int, ulaw: bytes, now: float) -> None:
        """Audio sent to the caller, starting at playout `position`."""

    def played_to(self, position: int, now: float) -> None:
        """Everything before `position` has played (a mark echo at `now`)."""

    def cut(self, position: int, now: float) -> None:
        """A barge-in's `clear`: what was sent from `position` on never played."""

    def close(self, heard_to: int | None, now: float) -> Any:
        """The call ended; what was sent from `heard_to` on was not heard."""


@attrs.define
class CallResult:
    call_sid: str | None
    stream_sid: str | None
    outcome: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float = 0.0
    first_audio_s: float | None = None
    committed_id: int | None = None  # the job's commit of this call (order or booking number)
    counts: dict[str, int] = attrs.field(factory=dict)
    usage: list[dict[str, Any]] = attrs.field(factory=list)
    transcription_usage: list[dict[str, Any]] = attrs.field(factory=list)  # of the caller's transcribed turns
    custom_parameters: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class CallSetup:
    """Everything a call needs that is the same for every call."""

    connect: Connector
    session: rt.SessionSettings
    flow: FlowSettings
    job: Job  # what the call is for: its tools, words, task and commit
    connect_timeout_s: float = 10.0
    # Checks the `start` message (raises StreamRefused); may be async, and may return the setup of
    # the call it names (the business its parameters carry) to run it with instead of this one.
    check_start: Callable[[tw.Start], Awaitable[CallSetup | None] | CallSetup | None] | None = None
    # Awaited before each tool runs (bounded by PREPARE_TIMEOUT_S): loads what the job's tool needs
    # from the store or a calendar into the task (see voicebridge.business.tool_preparer).
    prepare_tool: PrepareTool | None = None
    # The business's "now" for a job (its instructions, tools, commit): the wall clock, except in
    # a replay, which runs a recorded call at the time it was recorded.
    wall_clock: Callable[[], datetime] = utc_now
    record_dir: Any = None  # Path | None
    # What a recording's meta must carry for a replay to run the same business (e.g. {"business":
    # "example_menu_es.toml"}, a business file packaged with the job); empty for the default one.
    record_settings: Mapping[str, Any] = attrs.field(factory=dict)
    # Opens the call's recording of what was said and heard, given its CallSid and the trio time
    # of its stream's start (None: not recorded); the daemon hands it in (VOICEBRIDGE_AUDIO_RECORDING).
    audio_tap: Callable[[str, float], AudioTap | None] | None = None


async def open_session(stream: MessageStream, settings: rt.SessionSettings, timeout_s: float) -> None:
    """Send session.update, then wait for session.created (one deadline); do not wait for session.updated.

    The Realtime API applies a session's events in order, so the greeting's response.create may
    follow at once: waiting for the acknowledgement would add a round trip to the caller's first
    audio (docs/performance.md, "Greeting"). A rejected setting still arrives, as an error event
    the call's reader reports like any other model error.
    """
    try:
        with trio.fail_after(timeout_s):
            await stream.send(rt.session_update(settings))
            while True:
                ev = rt.parse_server(await stream.receive())
                if isinstance(ev, rt.RealtimeError):
                    raise SetupError(f"Realtime refused the session: {ev.code or ev.type}: {ev.message[:200]}")
                if isinstance(ev, rt.SessionCreated):
                    return
    except trio.TooSlowError:
        raise SetupError(f"Realtime session not ready within {timeout_s:g} s") from None
    except StreamClosed as exc:
        raise SetupError(f"Realtime closed the socket during setup ({exc.code})") from None
    except ProtocolError as exc:
        raise SetupError(f"Realtime sent a malformed event during setup: {exc}") from None


def session_settings(setup: CallSetup) -> rt.SessionSettings:
    """The session's settings for a call starting now: the job's instructions carry its local time."""
    return attrs.evolve(setup.session, instructions=setup.job.instructions(setup.wall_clock()))


def job_prompts(setup: CallSetup) -> JobPrompts:
    """The job's fixed prompts for a call starting now. A job whose words depend on the time (the
    pizza shop's greeting outside its opening hours) offers `prompts_at(now)`; others just `prompts`."""
    prompts_at = getattr(setup.job, "prompts_at", None)
    if prompts_at is None:
        return setup.job.prompts
    prompts: JobPrompts = prompts_at(setup.wall_clock())
    return prompts


async def connect_session(setup: CallSetup, nursery: trio.Nursery) -> MessageStream:
    """Open and configure one Realtime session, within the connect deadline."""
    with trio.move_on_after(setup.connect_timeout_s) as scope:
        try:
            stream = await setup.connect(nursery)
        except (OSError, StreamClosed) as exc:
            raise SetupError(f"cannot reach the Realtime service: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # trio-websocket raises its own handshake errors
            raise SetupError(f"cannot open the Realtime socket: {type(exc).__name__}: {str(exc)[:200]}") from None
    if scope.cancelled_caught:
        raise SetupError(f"Realtime connect took longer than {setup.connect_timeout_s:g} s")
    try:
        await open_session(stream, session_settings(setup), setup.connect_timeout_s)
    except BaseException:
        await close_quietly(stream)
        raise
    return stream


class Call:
    """One live call: the flow, its channels, its sockets. Created and run by `run_call`."""

    def __init__(self, setup: CallSetup, twilio: MessageStream, start: tw.Start, hooks: CallHooks,
                 recorder: CallRecorder | None, tap: AudioTap | None = None) -> None:
        self.setup = setup
        self.tap = tap
        self.twilio = twilio
        self.start = start
        self.hooks = hooks
        self.recorder = recorder
        self.sid = start.call_sid
        caller_number = start.custom_parameters.get("From") or start.custom_parameters.get("from")
        self.task = setup.job.new_task(caller_number)
        self.flow = CallFlow(
            call_sid=start.call_sid, stream_sid=start.stream_sid, settings=setup.flow, task=self.task,
            run_tool=self._run_tool,
            task_state=lambda: setup.job.state_for_model(self.task), job_prompts=job_prompts(setup),
        )
        self.pcm16 = setup.session.audio_format == "pcm16"
        self._up = audio.Resampler(8000, 24000) if self.pcm16 else None
        self._down = audio.Resampler(24000, 8000) if self.pcm16 else None
        self.model_send, self.model_recv = trio.open_memory_channel[str](MODEL_CHANNEL)
        self.twilio_send, self.twilio_recv = trio.open_memory_channel[str](TWILIO_CHANNEL)
        self.twilio_flushed = trio.Event()  # set when twilio_writer has sent everything and stopped
        # Caller audio held while the session is being rotated (the link is down, the call is not).
        self._held: deque[str] | None = None
        # Frames in each channel, not yet taken by its writer (cheaper than .statistics() per frame).
        self._q_model = self._q_twilio = 0
        self.model: MessageStream | None = None
        self.swap_to: MessageStream | None = None
        self.conn_no = 0
        self.deadlines: dict[str, float] = {}
        self.timers_changed = trio.Event()
        self.nursery: trio.Nursery | None = None  # the call's tasks
        self.sockets: trio.Nursery | None = None  # the Realtime sockets' own tasks; outlives `nursery`
        self.outcome: str | None = None
        self.usage: list[dict[str, Any]] = []
        self.transcription_usage: list[dict[str, Any]] = []
        self._transcripts: deque[tuple[str, str, str | None, int]] = deque()  # lines waiting for the store, in order
        self._writing_transcripts = False
        # Spoken order: a turn's place is taken when it begins (the caller's speech starts, an agent
        # message is added), not when its transcript arrives (the caller's comes after the answer's).
        self._spoken: dict[str, int] = {}
        self._spoken_count = 0
        self.frames_dropped = 0
        self._frames_in = 0
        self._deltas_out = 0
        self._timed: dict[int, tuple[str, float]] = {}  # id(frame text) -> (direction, time received)
        self.protocol_errors = 0
        self.started_at = trio.current_time()
        self._prepare_failed = False

    def _run_tool(self, name: str, arguments: str) -> ToolResult:
        if self._prepare_failed:
            return ToolResult(output={"ok": False, "error": PREPARE_FAILED}, ok=False, intent=None, changed=False)
        return self.setup.job.run_tool(self.task, name, arguments, self.setup.wall_clock())

    async def _prepare_tool(self, name: str, arguments: str) -> None:
        """Let the job's lookups run before its tool (bounded; a failure is logged and the tool says so)."""
        self._prepare_failed = False
        if self.setup.prepare_tool is None:
            return
        try:
            with trio.fail_after(PREPARE_TIMEOUT_S):
                await self.setup.prepare_tool(self.task, name, arguments)
        except Exception as exc:
            self._prepare_failed = True
            log.error("tool lookup failed: %s", type(exc).__name__, extra={"event": "tool_prepare_failed", "tool": name,
                                                                           "error": str(exc)[:200]})

    # -- effects ---------------------------------------------------------------------------

    async def perform(self) -> None:
        for effect in self.flow.take_effects():
            await self._perform(effect)

    async def _perform(self, e: Effect) -> None:
        if isinstance(e, SendModel):
            if not self._model_nowait(e.text):
                self._q_model += 1
                await self.model_send.send(e.text)
        elif isinstance(e, SendCaller):
            if e.kind == "clear" and self.tap is not None:
                self.tap.cut(self.flow.playout.cut_at, trio.current_time())
            if self.outcome is None and not self._twilio_nowait(e.text):
                self._q_twilio += 1
                await self.twilio_send.send(e.text)
        elif isinstance(e, ArmTimer):
            self.deadlines[e.name] = trio.current_time() + e.seconds
            self.timers_changed.set()
        elif isinstance(e, DisarmTimer):
            if self.deadlines.pop(e.name, None) is not None:
                self.timers_changed.set()
        elif isinstance(e, Hangup):
            await self._hangup(e.outcome)
        elif isinstance(e, Commit):
            assert self.nursery is not None
            self.nursery.start_soon(self._commit, e.call_id)
        elif isinstance(e, Rotate):
            assert self.nursery is not None
            self._held = deque(maxlen=HOLD_FRAMES)
            self.nursery.start_soon(self._rotate)
        elif isinstance(e, Transcript):
            self._event("transcript", {"role": e.role, "text": e.text})
            if self.hooks.on_transcript is not None:
                # Each line keeps its place in the spoken order (taken when its turn began); one
                # writer task per call stores the lines, so no write races another.
                position = self._spoken.pop(e.item_id, None) if e.item_id else None
                self._transcripts.append((e.role, e.text, e.item_id,
                                          position if position is not None else self._turn_began(None)))
                if not self._writing_transcripts:
                    assert self.nursery is not None
                    self._writing_transcripts = True
                    self.nursery.start_soon(self._write_transcripts)
        elif isinstance(e, Notice):
            if e.kind == "usage":
                self.usage.append(e.fields["usage"])
            else:
                log.info("call %s", e.kind, extra={"event": e.kind, **_loggable(e.fields)})
            self._event(e.kind, e.fields)

    # The fast path: when nothing is queued for a socket and it can take the frames at once
    # (RawWebSocket.try_send_nowait), write them from this task instead of waking the writer
    # task; order is kept because the channel is empty and no send is in flight.

    def _model_nowait(self, text: str) -> bool:
        fast = getattr(self.model, "try_send_nowait", None)
        return fast is not None and not self._q_model and fast(text)

    def _twilio_nowait(self, *texts: str) -> bool:
        fast = getattr(self.twilio, "try_send_nowait", None)
        return fast is not None and not self._q_twilio and fast(*texts)

    def _bad_frame(self, source: str, exc: ProtocolError) -> None:
        """A frame we cannot understand: count it, log what was wrong (never its content), go on."""
        self.protocol_errors += 1
        log.warning("bad %s frame: %s", source, exc, extra={"event": "protocol_error", "source": source})
        self._event("protocol_error", {"source": source, "error": str(exc)})

    async def _write_transcripts(self) -> None:
        assert self.hooks.on_transcript is not None
        try:
            while self._transcripts:
                role, text, item_id, position = self._transcripts.popleft()
                await self.hooks.on_transcript(self.sid, role, text, item_id, position)
        finally:
            self._writing_transcripts = False

    def _turn_began(self, item_id: str | None) -> int:
        """The next place in the spoken order, kept for `item_id` (once) until its transcript arrives."""
        if item_id is not None and item_id in self._spoken:
            return self._spoken[item_id]
        self._spoken_count += 1
        if item_id is not None:
            self._spoken[item_id] = self._spoken_count
        return self._spoken_count

    def _event(self, kind: str, fields: dict[str, Any]) -> None:
        if self.hooks.on_event is not None:
            self.hooks.on_event(self.sid, kind, fields)

    async def _hangup(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
        if self.hooks.on_outcome is not None:
            self.hooks.on_outcome(self.sid, self.outcome)
        # Whatever is queued for the caller goes out first (normally nothing: we waited for the last mark).
        self.twilio_send.close()
        assert self.nursery is not None
        self.nursery.start_soon(self._close_twilio_after_flush)

    async def _close_twilio_after_flush(self) -> None:
        with trio.move_on_after(2.0):
            await self.twilio_flushed.wait()  # the writer sent what was queued (the channel is closed)
        await self.twilio.aclose(1000, "call ended")
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    def end_now(self, outcome: str) -> None:
        """End the call at once (daemon shutdown past its drain deadline); the outcome is recorded."""
        if self.outcome is None:
            self.outcome = outcome
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def tell_model(self, text: str) -> bool:
        """Give the model a system note now (staff changed the menu's day); False if it had to be dropped.

        Called from outside the call's tasks: the note is queued for the model writer, after
        whatever is already queued, and not answered (the model uses it on its next turn).
        """
        if self.outcome is not None:
            return False
        try:
            self.model_send.send_nowait(rt.item_message("system", text))
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.warning("a note to the model was dropped: its queue is full", extra={"event": "note_dropped"})
            return False
        self._q_model += 1
        return True

    async def _commit(self, call_id: str | None) -> None:
        if self.hooks.commit is None:
            self.flow.commit_failed(call_id, "no store configured")
        else:
            try:
                done = await self.hooks.commit(self.sid, self.task)
            except CommitError as exc:  # the job refused (a slot taken meanwhile): the caller hears why
                log.warning("commit refused: %s", str(exc)[:300], extra={"event": "commit_refused"})
                self.flow.commit_failed(call_id, "refused", str(exc))
            except Exception as exc:  # the caller must not hear "confirmed" for something we lost
                log.error("commit failed: %s", type(exc).__name__, extra={"error": str(exc)[:300]})
                self.flow.commit_failed(call_id, f"{type(exc).__name__}")
            else:
                self.flow.committed(call_id, done.id, done.summary)
        await self.perform()

    # -- tasks -----------------------------------------------------------------------------

    async def twilio_reader(self) -> None:
        flow = self.flow
        while True:
            try:
                text = await self.twilio.receive()
            except StreamClosed:
                break
            try:
                ev = tw.parse_twilio(text)
            except ProtocolError as exc:
                self._bad_frame("twilio", exc)
                continue
            if isinstance(ev, tw.Media):
                if self.tap is not None:
                    self._tap_caller(ev)
                if flow.link_up:
                    self._frames_in += 1
                    timed = self.hooks.on_forward is not None and self._frames_in % LATENCY_SAMPLE_EVERY == 0
                    self._forward_caller_audio(ev.payload_b64, trio.current_time() if timed else None)
                elif self._held is not None:
                    self._held.append(ev.payload_b64)
                continue
            if isinstance(ev, tw.MarkEcho):
                now = trio.current_time()
                flow.mark(ev.name, now)
                if self.tap is not None:
                    self.tap.played_to(flow.playout.confirmed, now)
            elif isinstance(ev, tw.Dtmf):
                flow.dtmf(ev.digit)
            elif isinstance(ev, tw.Stop):
                break
            else:
                continue
            await self.perform()
        if self.outcome is None:
            flow.caller_hung_up()
            await self.perform()

    def _forward_caller_audio(self, payload_b64: str, received_at: float | None = None) -> None:
        if self.pcm16:
            assert self._up is not None
            pcm = self._up.process(audio.ulaw_to_pcm16(b64_decode("twilio", "payload", payload_b64)))
            payload_b64 = b64_encode(pcm)
        text = rt.append_audio(payload_b64)
        if self._model_nowait(text):
            if received_at is not None:
                self._forwarded("in", received_at)
            return
        try:
            self.model_send.send_nowait(text)
        except trio.WouldBlock:
            self.frames_dropped += 1
            return
        self._q_model += 1
        if received_at is not None:
            self._timed[id(text)] = ("in", received_at)

    def _forwarded(self, direction: str, received_at: float) -> None:
        assert self.hooks.on_forward is not None
        self.hooks.on_forward(direction, trio.current_time() - received_at)

    def _sent(self, text: str) -> None:
        """A frame left through a writer task: if it was a timed one, report its time in the bridge."""
        timed = self._timed.pop(id(text), None)
        if timed is not None:
            self._forwarded(*timed)

    async def twilio_writer(self) -> None:
        try:
            async for text in self.twilio_recv:
                self._q_twilio -= 1
                try:
                    await self.twilio.send(text)
                except StreamClosed:
                    return
                if self._timed:
                    self._sent(text)
        finally:
            self.twilio_flushed.set()

    async def model_writer(self) -> None:
        async for text in self.model_recv:
            self._q_model -= 1
            stream = self.model
            if stream is None:
                continue  # the link is down: the flow re-sends what matters when it comes back
            try:
                await stream.send(text)
            except StreamClosed:
                continue  # model_link sees the close and reconnects
            if self._timed:
                self._sent(text)

    async def model_link(self, first: MessageStream, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.model = self._wrap(first)
        task_status.started()
        while True:
            assert self.model is not None
            await self._read_model(self.model)
            if self.swap_to is not None:  # a planned rotation: carry on with the new session
                self.model, self.swap_to = self.swap_to, None
                self.flow.link_ready(rotated=True)
                await self.perform()
                self._release_held()
                continue
            self._held = None
            lost, self.model = self.model, None
            await close_quietly(lost)
            if self.outcome is not None or self.flow.state in ("ended", "failed"):
                return
            self.flow.link_lost()
            await self.perform()
            self.model = await self._reconnect()
            self.flow.link_ready()
            await self.perform()

    async def _reconnect(self) -> MessageStream:
        """Keep trying, with bounded backoff; the flow's reconnect budget timer ends the call."""
        attempt = 0
        assert self.nursery is not None
        while True:
            try:
                assert self.sockets is not None
                raw = await connect_session(self.setup, self.sockets)
            except SetupError as exc:
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                log.warning("realtime reconnect failed: %s", exc, extra={"event": "reconnect_failed", "attempt": attempt})
                attempt += 1
                await trio.sleep(delay)
                continue
            return self._wrap(raw)

    def _release_held(self) -> None:
        """Give the caller audio held during a rotation to the session now in use, in order."""
        held, self._held = self._held, None
        if held and self.flow.link_up:
            for payload in held:
                self._forward_caller_audio(payload)

    def _wrap(self, stream: MessageStream) -> MessageStream:
        self.conn_no += 1
        if self.recorder is not None:
            return self.recorder.wrap(stream, "realtime", self.conn_no)
        return stream

    async def _rotate(self) -> None:
        assert self.nursery is not None
        try:
            assert self.sockets is not None
            fresh = await connect_session(self.setup, self.sockets)
        except SetupError as exc:
            log.warning("session rotation failed, keeping the old session: %s", exc)
            self.flow.link_up = self.model is not None
            self._release_held()
            return
        self.swap_to = self._wrap(fresh)
        old = self.model
        if old is not None:
            await close_quietly(old, 1000, "rotated")

    async def _read_model(self, stream: MessageStream) -> None:
        flow = self.flow
        while True:
            try:
                text = await stream.receive()
            except StreamClosed:
                return
            try:
                ev = rt.parse_server(text)
            except ProtocolError as exc:
                self._bad_frame("realtime", exc)
                continue
            now = trio.current_time()
            if isinstance(ev, rt.AudioDelta):
                await self._forward_model_audio(ev, now)
                continue
            if isinstance(ev, rt.SpeechStarted):
                self._turn_began(ev.item_id)
                flow.speech_started(now)
            elif isinstance(ev, rt.OutputItemAdded):
                if ev.item_type == "message":
                    self._turn_began(ev.item_id)
                continue
            elif isinstance(ev, rt.SpeechStopped):
                flow.speech_stopped()
            elif isinstance(ev, rt.ResponseCreated):
                flow.response_created(ev.response_id)
            elif isinstance(ev, rt.ResponseDone):
                flow.response_done(ev.response_id, ev.status, ev.usage, now)
            elif isinstance(ev, rt.FunctionCall):
                await self._prepare_tool(ev.name, ev.arguments)
                flow.function_call(ev.response_id, ev.call_id, ev.name, ev.arguments)
            elif isinstance(ev, rt.TranscriptDone):
                flow.transcript("assistant", ev.transcript, ev.item_id)
            elif isinstance(ev, rt.InputTranscript):
                if ev.usage is not None:
                    self.transcription_usage.append(ev.usage)
                    self._event("transcription_usage", {"usage": ev.usage})
                flow.transcript("caller", ev.transcript, ev.item_id)
            elif isinstance(ev, rt.RealtimeError):
                flow.model_error(ev)
            else:
                continue
            await self.perform()

    async def _forward_model_audio(self, ev: rt.AudioDelta, now: float) -> None:
        if self.outcome is not None:
            return
        payload, n_bytes, generated_ms = ev.delta_b64, ev.n_bytes, ev.n_bytes / 8
        ulaw: bytes | None = None
        if self.pcm16:  # PCM16 24 kHz from the model -> µ-law 8 kHz for the caller
            assert self._down is not None
            ulaw = audio.pcm16_to_ulaw(self._down.process(b64_decode("realtime", "delta", payload)))
            payload, n_bytes, generated_ms = b64_encode(ulaw), len(ulaw), ev.n_bytes / 48
        name = self.flow.audio_delta(ev.response_id, ev.item_id, n_bytes, generated_ms, now)
        if name is None:
            return
        if self.tap is not None:
            self._tap_sent(self.flow.playout.sent - n_bytes, ulaw, payload, now)
        if self.flow.first_audio_at == now:
            ms = round((now - self.started_at) * 1000, 1)
            log.info("first audio to the caller %.1f ms after the stream started", ms,
                     extra={"event": "first_audio", "ms": ms})
            self._event("first_audio", {"ms": ms})
        self._deltas_out += 1
        timed = self.hooks.on_forward is not None and self._deltas_out % LATENCY_SAMPLE_EVERY == 1
        media, mark = tw.media(self.start.stream_sid, payload), tw.mark(self.start.stream_sid, name)
        if self._twilio_nowait(media, mark):  # one write for both frames
            if timed:
                self._forwarded("out", now)
            return
        if timed:
            self._timed[id(media)] = ("out", now)
        self._q_twilio += 2
        await self.twilio_send.send(media)
        await self.twilio_send.send(mark)

    def _tap_caller(self, ev: tw.Media) -> None:
        assert self.tap is not None
        try:
            ulaw = b64_decode("twilio", "payload", ev.payload_b64)
        except ProtocolError:  # forwarded as it came, as without a recording; the recording keeps silence
            return
        self.tap.caller_audio(ulaw, ev.timestamp_ms, trio.current_time())

    def _tap_sent(self, position: int, ulaw: bytes | None, payload_b64: str, now: float) -> None:
        assert self.tap is not None
        if ulaw is None:
            try:
                ulaw = b64_decode("realtime", "delta", payload_b64)
            except ProtocolError:  # passed on as it came (Twilio judges it); the recording keeps silence
                return
        self.tap.caller_hears(position, ulaw, now)

    async def timers(self) -> None:
        while True:
            self.timers_changed = trio.Event()
            if self.deadlines:
                name, deadline = min(self.deadlines.items(), key=lambda kv: kv[1])
            else:
                name, deadline = "", math.inf
            with trio.move_on_at(deadline):
                await self.timers_changed.wait()
                continue
            if self.deadlines.get(name) == deadline:
                del self.deadlines[name]
                self.flow.timer(name)
                await self.perform()


async def run_call(twilio: MessageStream, setup: CallSetup, hooks: CallHooks | None = None, *,
                   prewarmed: Callable[[str], Awaitable[MessageStream | None]] | None = None) -> CallResult:
    """Run one call on an accepted Twilio media stream until it ends; never raises for call errors."""
    hooks = hooks or CallHooks()
    recorder: CallRecorder | None = None
    start: tw.Start | None = None
    with contextlib.suppress(StreamClosed), trio.move_on_after(START_TIMEOUT_S):  # gone before `start`: no call
        while start is None:
            text = await twilio.receive()
            try:
                ev = tw.parse_twilio(text)
            except ProtocolError as exc:
                log.warning("bad Twilio frame before start: %s", exc)
                continue
            if isinstance(ev, tw.Start):
                start = ev
            elif isinstance(ev, tw.Stop):
                break
    if start is None:
        return CallResult(None, None, "no_stream")
    if setup.record_dir is not None:
        from pathlib import Path

        from voicebridge import __version__

        meta = {"version": __version__, "call_sid": start.call_sid, "wall_clock": setup.wall_clock().isoformat(),
                "settings": {**attrs.asdict(setup.flow), "audio_format": setup.session.audio_format,
                             "connect_timeout_s": setup.connect_timeout_s, "job": setup.job.name,
                             **setup.record_settings}}
        recorder = CallRecorder(Path(setup.record_dir) / f"{start.call_sid}-{int(time.time())}.jsonl", meta)
        recorder.add("twilio", "in", text)
        recorder.started(trio.current_time())
        twilio = recorder.wrap(twilio, "twilio")
    try:
        return await _run_started_call(twilio, start, setup, hooks, recorder, prewarmed)
    finally:
        if recorder is not None:
            recorder.close()


async def _run_started_call(twilio: MessageStream, start: tw.Start, setup: CallSetup, hooks: CallHooks,
                            recorder: CallRecorder | None,
                            prewarmed: Callable[[str], Awaitable[MessageStream | None]] | None) -> CallResult:
    result = CallResult(start.call_sid, start.stream_sid, "error", custom_parameters=dict(start.custom_parameters))
    result.started_at = datetime.now(timezone.utc)
    t0 = trio.current_time()
    if setup.check_start is not None:
        try:
            chosen = setup.check_start(start)
            if inspect.isawaitable(chosen):
                chosen = await chosen
            if chosen is not None:
                setup = chosen
        except StreamRefused as exc:
            log.warning("stream refused: %s", exc, extra={"event": "stream_refused", "reason": str(exc)})
            result.outcome = "refused"
            with trio.CancelScope(shield=True, deadline=trio.current_time() + FINISH_TIMEOUT_S):
                await _finish_call(None, result, twilio, t0, hooks)
            return result
    if hooks.on_started is not None:
        await hooks.on_started(start)
    call: Call | None = None
    # Two nurseries: `sockets` holds the Realtime sockets' own tasks (trio-websocket's reader),
    # `nursery` the call's tasks. The sockets' nursery outlives the call's tasks, so that closing
    # a socket at the end of the call still has a reader to complete the close handshake.
    async with trio.open_nursery() as sockets:
        try:
            async with trio.open_nursery() as nursery:
                try:
                    model = await prewarmed(start.call_sid) if prewarmed is not None else None
                    if model is None:
                        model = await connect_session(setup, sockets)
                except SetupError as exc:
                    log.error("call failed: %s", exc, extra={"event": "call_failed"})
                    result.outcome = "ai_failed"
                    nursery.cancel_scope.cancel()
                else:
                    tap = setup.audio_tap(start.call_sid, t0) if setup.audio_tap is not None else None
                    call = Call(setup, twilio, start, hooks, recorder, tap)
                    call.nursery = nursery
                    call.sockets = sockets
                    call.started_at = t0
                    if hooks.on_live is not None:
                        hooks.on_live(call)
                    await nursery.start(call.model_link, model)
                    nursery.start_soon(call.twilio_reader)
                    nursery.start_soon(call.twilio_writer)
                    nursery.start_soon(call.model_writer)
                    nursery.start_soon(call.timers)
                    call.flow.start()
                    await call.perform()
        except* Exception as group:  # one call's bug never reaches another call: end this one cleanly
            log.error("call crashed", exc_info=group, extra={"event": "call_crashed"})
            if call is not None and call.outcome is None:
                call.outcome = "error"
            result.outcome = "error"
        finally:
            # Also runs when the web layer cancels us (the caller's socket vanished, or shutdown):
            # the outcome is recorded and every socket closed whatever happened.
            try:
                if call is not None and call.tap is not None:
                    # However the call ended, its recording is finished before its socket closes:
                    # what was sent but not yet heard by now, the caller never heard.
                    now = trio.current_time()
                    try:
                        call.tap.close(call.flow.playout.played(now), now)
                    except Exception:  # a recording's bug must not keep the call's end from being recorded
                        log.exception("finishing the call's audio recording failed")
                with trio.CancelScope(shield=True, deadline=trio.current_time() + FINISH_TIMEOUT_S):
                    await _finish_call(call, result, twilio, t0, hooks)
            finally:
                if call is not None:
                    call.flow.close()
            sockets.cancel_scope.cancel()
    return result


async def _finish_call(call: Call | None, result: CallResult, twilio: MessageStream, t0: float,
                       hooks: CallHooks) -> None:
    if call is not None:
        for stream in (call.model, call.swap_to):
            if stream is not None:
                await close_quietly(stream)
        if call.outcome is None and call.flow.outcome is None:
            call.outcome = "caller_hung_up"  # cancelled from outside: the caller's socket is gone
        result.outcome = call.outcome or call.flow.outcome or result.outcome
        result.committed_id = call.flow.committed_id
        result.counts = {**call.flow.counts, "frames_dropped": call.frames_dropped,
                         "protocol_errors": call.protocol_errors}
        result.usage = call.usage
        result.transcription_usage = call.transcription_usage
        if call.flow.first_audio_at is not None:
            result.first_audio_s = call.flow.first_audio_at - t0
    if hooks.on_outcome is not None and result.call_sid:
        hooks.on_outcome(result.call_sid, result.outcome)
    code = {"error": 1011, "ai_failed": 1011, "refused": 1008}.get(result.outcome, 1000)
    await close_quietly(twilio, code, "call ended")
    result.ended_at = datetime.now(timezone.utc)
    result.duration_s = trio.current_time() - t0
    log.info("call ended: %s", result.outcome, extra={"event": "call_ended", "outcome": result.outcome,
                                                      "duration_s": round(result.duration_s, 3)})
    if hooks.on_ended is not None:
        try:
            await hooks.on_ended(result)
        except Exception:
            log.exception("recording the end of a call failed")


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _loggable(fields: dict[str, Any]) -> dict[str, Any]:
    """Notice fields as log `extra`: no transcript text or audio; no clash with LogRecord attributes."""
    return {(f"f_{k}" if k in _RESERVED else k): v for k, v in fields.items()
            if k not in ("usage", "text", "payload", "audio", "delta")}
