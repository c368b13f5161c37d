"""CallFlow: the state of one call and every decision about it. Pure: no I/O, no clock.

The call's tasks turn what arrives (Twilio frames, Realtime events, timer expiries) into method
calls here, passing the time as `now`; the flow updates its state, drives the `transitions`
machine, and queues effects (`voicebridge.engine.effects`) that the tasks perform. Nothing here awaits.

States: greeting -> ordering -> confirming -> done, plus `transfer` (the caller wants a person)
and `failed` (the AI side is gone); `ended` is terminal for every path. The business states say
where the job's task is (an order, a booking request: "ordering" is gathering it, "confirming" is
its read-back, "done" is committed after the caller's yes); barge-in, timeouts and reconnection are internal transitions that act on the
playout accounting (`voicebridge.engine.playout`) and on the response in flight.

Why one module of this length: the flow is one state machine, and every decision it makes
(barge-in, timers, reconnection, the caller's yes) reads and writes the same per-call state;
split, each part would reach into the others'.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

import attrs
from transitions import Machine

from voicebridge.engine import prompts
from voicebridge.engine.effects import ArmTimer, Commit, DisarmTimer, Effect, Hangup, Notice, Rotate, SendCaller, SendModel, Transcript
from voicebridge.engine.job import JobPrompts, ToolResult
from voicebridge.engine.playout import Playout
from voicebridge.edges.protocol import realtime as rt
from voicebridge.edges.protocol import twilio_media as tw

STATES = ["greeting", "ordering", "confirming", "done", "transfer", "failed", "ended"]
LIVE = ["greeting", "ordering", "confirming", "done", "transfer"]

# A trigger with no transition from the current state changes nothing (ignore_invalid_triggers).
TRANSITIONS: list[dict[str, Any]] = [
    # the business path
    {"trigger": "conversation_started", "source": "greeting", "dest": "ordering"},
    {"trigger": "review", "source": ["greeting", "ordering", "confirming"], "dest": "confirming"},
    {"trigger": "change", "source": "confirming", "dest": "ordering"},
    {"trigger": "confirm", "source": "confirming", "dest": "done"},
    {"trigger": "save_failed", "source": "done", "dest": "confirming"},
    {"trigger": "ask_for_person", "source": ["greeting", "ordering", "confirming", "done"], "dest": "transfer"},
    # the AI side cannot come back, or the call is over
    {"trigger": "fail", "source": LIVE, "dest": "failed"},
    {"trigger": "end", "source": LIVE + ["failed"], "dest": "ended"},
]

# Timer names.
SILENCE, MAX_CALL, MAX_CALL_GRACE, STALL, RECONNECT, ROTATE, HANGUP_GUARD = (
    "silence", "max_call", "max_call_grace", "stall", "reconnect", "rotate", "hangup_guard")
HANGUP_GUARD_S = 15.0  # wait at most this long for the last words to be heard
MAX_CALL_GRACE_S = 20.0
RECENT_TURNS = 12


@attrs.frozen
class FlowSettings:
    silence_timeout_s: float = 12.0
    max_call_s: float = 900.0
    response_stall_timeout_s: float = 8.0
    reconnect_budget_s: float = 15.0
    session_rotate_s: float = 55 * 60.0


ToolRunner = Callable[[str, str], ToolResult]  # (name, arguments json) -> the job's answer

_MACHINE: Machine | None = None


def shared_machine() -> Machine:
    """The one `transitions` machine every call's flow is a model of.

    States, events and transitions are the same for every call, so they are built once; each
    CallFlow is added as a model (its own `state` and trigger methods) and removed when its call
    ends (`CallFlow.close`). A machine per call cost ~250 objects that every full pass of the
    cyclic collector walked, for every live call. The queue is the machine's, which is safe here:
    triggers run to completion synchronously and a flow's callbacks only trigger that flow.
    """
    global _MACHINE
    if _MACHINE is None:
        _MACHINE = Machine(model=None, states=STATES, transitions=TRANSITIONS, initial="greeting",
                           auto_transitions=False, queued=True, ignore_invalid_triggers=True,
                           after_state_change="_state_changed")
    return _MACHINE


class CallFlow:
    state: str
    trigger: Callable[..., bool]

    def __init__(self, *, call_sid: str, stream_sid: str, settings: FlowSettings, task: Any,
                 run_tool: ToolRunner, task_state: Callable[[], dict[str, Any]], job_prompts: JobPrompts) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.settings = settings
        self.task = task  # the job's task: the order, the booking request
        self._run_tool = run_tool
        self._task_state = task_state
        self.job_prompts = job_prompts
        self.playout = Playout()
        self.effects: list[Effect] = []
        self.response_active: str | None = None  # response id between response.created and .done
        self.response_requested = False  # we sent response.create, no response.created yet
        self.pending_respond: tuple[str | None, str | None] | None = None  # (purpose, instructions)
        self.muted_responses: set[str] = set()
        self.caller_speaking = False
        self.reprompts = 0
        self.ending: str | None = None  # hang up with this outcome once the last words were heard
        self.outcome: str | None = None
        self.committed_id: int | None = None  # the job's commit (order number, booking number)
        self.link_up = False
        self.resume_needed = False
        self.rotate_due = False
        self.turns: deque[tuple[str, str]] = deque(maxlen=RECENT_TURNS)
        # The caller's yes (see `_confirm_refusal`): the response that reads the task back, whether
        # all its audio was heard, and the caller's turns since.
        self.readback: str | None = None  # "pending" (review done, read-back not started) or its response id
        self.readback_done = False  # the read-back response completed (all its audio generated)
        self.readback_audio = False  # the read-back response carried audio
        self.readback_heard_turn: int | None = None  # caller turns counted when the read-back was fully heard
        self.caller_turns = 0  # speech_started count
        self.response_turn: dict[str, int] = {}  # response id -> caller turns when it was created (live ones)
        self.counts = {"barge_ins": 0, "model_errors": 0, "reconnects": 0, "stalls": 0, "dropped_deltas": 0}
        self.first_audio_at: float | None = None
        self._last_state = "greeting"
        self.machine = shared_machine()
        self.machine.add_model(self)

    def close(self) -> None:
        """The call is over: leave the shared machine (it would otherwise keep this flow alive)."""
        if self in self.machine.models:
            self.machine.remove_model(self)

    def _fire(self, name: str) -> None:
        """Fire a trigger if it has a transition from the current state; otherwise it changes nothing."""
        if name in self.machine.get_triggers(self.state):
            self.trigger(name)

    def _state_changed(self) -> None:
        if self.state != self._last_state:  # internal transitions (dest None) change nothing
            self._last_state = self.state
            self._notice("state", state=self.state)

    # -- effects ---------------------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out

    def _model(self, text: str, kind: str) -> None:
        if self.link_up:
            self.effects.append(SendModel(text, kind))

    def _notice(self, kind: str, **fields: Any) -> None:
        self.effects.append(Notice(kind, fields))

    def _arm(self, name: str, seconds: float) -> None:
        self.effects.append(ArmTimer(name, seconds))

    def _disarm(self, name: str) -> None:
        self.effects.append(DisarmTimer(name))

    # -- life of the call -----------------------------------------------------------------

    def start(self) -> None:
        """The stream has started and the Realtime session is ready: the AI speaks first."""
        self.link_up = True
        self._arm(MAX_CALL, self.settings.max_call_s)
        self._arm(ROTATE, self.settings.session_rotate_s)
        self._respond("greeting", self.job_prompts.greeting)

    def caller_hung_up(self) -> None:
        if self.state == "ended":
            return
        self._finish(self.ending or ("completed" if self.committed_id is not None else "caller_hung_up"))

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        self._fire("end")
        self.effects.append(Hangup(outcome))

    def _end_when_heard(self, outcome: str) -> None:
        self.ending = outcome
        self._arm(HANGUP_GUARD, HANGUP_GUARD_S)
        self._check_idle(None)

    # -- responses ------------------------------------------------------------------------

    def _respond(self, purpose: str | None, instructions: str | None) -> None:
        """Ask the model to speak; deferred while a response is in flight."""
        if self.response_active is not None or self.response_requested or not self.link_up:
            self.pending_respond = (purpose, instructions)
            return
        self.response_requested = True
        self._disarm(SILENCE)
        metadata = {"purpose": purpose} if purpose else None
        self._model(rt.response_create(instructions=instructions, metadata=metadata), "response.create")
        self._arm(STALL, self.settings.response_stall_timeout_s)

    def response_created(self, response_id: str) -> None:
        if self.readback == "pending":
            self.readback = response_id  # the model's next answer after the review reads it back
        self.response_turn = {response_id: self.caller_turns}
        self.response_active = response_id
        self.response_requested = False
        self._disarm(SILENCE)
        self._arm(STALL, self.settings.response_stall_timeout_s)

    def response_done(self, response_id: str, status: str, usage: dict[str, Any] | None, now: float) -> None:
        if usage:
            self._notice("usage", response_id=response_id, usage=usage)
        if response_id == self.readback:
            if status == "completed" and self.readback_audio:
                self.readback_done = True
            elif status == "completed":  # no audio (a tool call): the read-back is still to come
                self.readback = "pending"
            else:
                self._readback_lost("read-back " + status)
        if response_id != self.response_active:
            return  # a response we already gave up on (stalled, or from before a reconnect)
        self.response_active = None
        self._disarm(STALL)
        if self.pending_respond is not None:
            purpose, instructions = self.pending_respond
            self.pending_respond = None
            self._respond(purpose, instructions)
        self._check_idle(now)

    def audio_delta(self, response_id: str, item_id: str, n_bytes: int, generated_ms: float, now: float) -> str | None:
        """Model audio: returns the mark name to send after it, or None to drop it (cut by a barge-in)."""
        if response_id in self.muted_responses or self.playout.is_muted(item_id) or self.state == "ended":
            self.counts["dropped_deltas"] += 1
            return None
        if self.response_active == response_id:
            self._arm(STALL, self.settings.response_stall_timeout_s)
        if self.first_audio_at is None:
            self.first_audio_at = now
        if response_id == self.readback:
            self.readback_audio = True
        return self.playout.on_send(item_id, response_id, n_bytes, generated_ms, now)

    def mark(self, name: str, now: float) -> None:
        if self.playout.on_mark(name, now) and not self.playout.is_playing():
            self._readback_heard()
            if self.state == "greeting":
                self._fire("conversation_started")
            self._check_idle(now)

    def _check_idle(self, now: float | None) -> None:
        """Nothing generating and nothing left to hear: hang up if ending, else wait for the caller."""
        if not self.playout.is_playing():
            self._readback_heard()
        if self.response_active is not None or self.response_requested or self.playout.is_playing():
            return
        if self.state == "ended":
            return
        if self.ending is not None:
            self._finish(self.ending)
            return
        if self.rotate_due and self.link_up and not self.caller_speaking:  # never split an utterance
            self.rotate_due = False
            self.link_up = False
            self.effects.append(Rotate())
            return
        if not self.caller_speaking:
            self._arm(SILENCE, self.settings.silence_timeout_s)

    # -- the caller speaks (server VAD) -----------------------------------------------------

    def speech_started(self, now: float) -> None:
        self.caller_turns += 1
        self.caller_speaking = True
        self.reprompts = 0
        self._disarm(SILENCE)
        if self.state == "greeting":
            self._fire("conversation_started")
        if self.playout.is_playing():
            self._barge_in(now)
        elif self.response_active is not None:
            # Generating but nothing audible yet: a reply composed before the caller spoke is stale.
            self._cancel_active("speech")

    def speech_stopped(self) -> None:
        self.caller_speaking = False

    def _barge_in(self, now: float) -> None:
        self.counts["barge_ins"] += 1
        if self.readback is not None and self.readback_heard_turn is None:
            self._readback_lost("barge-in during the read-back")
        cuts = self.playout.clear(now)
        self.effects.append(SendCaller(tw.clear(self.stream_sid), "clear"))
        if self.response_active is not None:
            self._cancel_active("barge_in")
        for cut in cuts:
            self._model(rt.item_truncate(cut.item_id, cut.audio_end_ms), "conversation.item.truncate")
        if self.ending is not None:  # the caller interrupted the last words: do not hang up on them
            self.ending = None
            self._disarm(HANGUP_GUARD)
        self._notice("barge_in", truncated=[(c.item_id, c.audio_end_ms) for c in cuts])

    def _cancel_active(self, why: str) -> None:
        assert self.response_active is not None
        self.muted_responses.add(self.response_active)
        self._model(rt.response_cancel(self.response_active), "response.cancel")
        self._notice("response_cancelled", response_id=self.response_active, why=why)
        # response.done (cancelled) will clear response_active.

    # -- tools ----------------------------------------------------------------------------

    def function_call(self, response_id: str, call_id: str, name: str, arguments: str) -> None:
        interrupted = response_id in self.muted_responses
        result = self._run_tool(name, arguments)
        self._notice("tool", name=name, ok=result.ok, intent=result.intent, interrupted=interrupted)
        if result.ok and result.intent == "confirm":
            refusal = self._confirm_refusal(response_id)
            if refusal is None:
                self._fire("confirm")
                self.effects.append(Commit(call_id))  # answered once the task is committed
                return
            self._notice("confirm_refused", why=refusal)
            error = self.job_prompts.not_read_back if refusal != "no_yes_yet" else prompts.NO_YES_YET
            self._tool_output(call_id, {"ok": False, "error": error}, respond=not interrupted)
            return
        if result.ok and result.intent == "review":
            self._fire("review")
            self.readback, self.readback_done, self.readback_heard_turn = "pending", False, None
            self.readback_audio = False
        elif result.ok and result.intent == "reject":
            self._fire("change")
            self._readback_lost("change")
        elif result.ok and result.changed:
            self._fire("change")
            self._readback_lost("change")
        self._tool_output(call_id, result.output, respond=False)
        if result.ok and result.intent == "transfer":
            self._transfer("tool")
            return
        if result.ok and result.intent == "end_call":
            outcome = "completed" if self.committed_id is not None else "ended_no_order"
            self._end_when_heard(outcome)
            return
        if not interrupted:
            # A result that arrives after the caller interrupted updates the order, but the AI does
            # not start talking on its own: the caller's new turn gets its own response.
            self._respond(None, None)

    # -- the caller's yes ------------------------------------------------------------------

    def _readback_heard(self) -> None:
        """The read-back response is complete and nothing is left to play: the caller heard it all."""
        if self.readback not in (None, "pending") and self.readback_done and self.readback_heard_turn is None:
            self.readback_heard_turn = self.caller_turns
            self._notice("readback_heard")

    def _readback_lost(self, why: str) -> None:
        if self.readback is not None:
            self._notice("readback_void", why=why)
        self.readback, self.readback_done, self.readback_heard_turn = None, False, None
        self.readback_audio = False

    def _confirm_refusal(self, response_id: str | None) -> str | None:
        """Why a confirmation cannot be committed now, or None when it can.

        A commit needs the whole read-back heard (its response completed and its last mark
        echoed), then a caller turn that began after it, and the confirming call must come in a
        response created after that turn: the model judged the caller's answer a yes. A barge-in
        during the read-back, a change, or a dropped session voids the read-back; a review and
        a confirmation in one response is refused, since the caller heard nothing in between.
        """
        if self.state != "confirming" or self.readback_heard_turn is None:
            return "not_read_back"
        if self.caller_turns <= self.readback_heard_turn:
            return "no_yes_yet"
        created = self.response_turn.get(response_id or "", -1)
        if created <= self.readback_heard_turn:
            return "no_yes_yet"
        return None

    def _tool_output(self, call_id: str, output: dict[str, Any], *, respond: bool) -> None:
        self._model(rt.item_function_output(call_id, json.dumps(output)), "conversation.item.create")
        if respond:
            self._respond(None, None)

    def committed(self, call_id: str | None, committed_id: int, summary: dict[str, Any]) -> None:
        self.committed_id = committed_id
        self._notice("committed", id=committed_id, **summary)
        if call_id is not None:
            self._tool_output(call_id, {"ok": True, "status": "confirmed", **summary}, respond=True)
        else:
            self._model(rt.item_message("system", self.job_prompts.saved_as.format(id=committed_id)),
                        "conversation.item.create")
            self._respond("confirmed", self.job_prompts.confirmed_by_keypad)

    def commit_failed(self, call_id: str | None, error: str, reason: str | None = None) -> None:
        """The commit did not happen. `reason` is the job's own refusal, said to the caller (a slot
        taken meanwhile); without one the failure is internal and the job's apology is used."""
        self._fire("save_failed")
        self._notice("commit_failed", error=error)
        say = reason or self.job_prompts.save_failed
        if call_id is not None:
            self._tool_output(call_id, {"ok": False, "error": say}, respond=True)
        else:
            self._respond(None, say)

    # -- keypad ---------------------------------------------------------------------------

    def dtmf(self, digit: str) -> None:
        self._notice("dtmf", digit=digit)
        if digit == "0":
            self._transfer("keypad")
        elif digit == "1" and self.state == "confirming":
            if self.readback_heard_turn is None:  # pressed before the read-back was heard to the end
                self._notice("confirm_refused", why="not_read_back", via="keypad")
                return
            self._fire("confirm")
            self.effects.append(Commit(None))

    def _transfer(self, via: str) -> None:
        if self.state not in ("greeting", "ordering", "confirming", "done"):
            return
        self._fire("ask_for_person")
        self._notice("transfer", via=via)
        if self.response_active is not None and via == "keypad":
            self._cancel_active("transfer")
        self._respond("transfer", self.job_prompts.transfer)
        self._end_when_heard("transferred")

    # -- transcripts ----------------------------------------------------------------------

    def transcript(self, role: str, text: str, item_id: str | None) -> None:
        if text:
            self.turns.append((role, text))
            self.effects.append(Transcript(role, text, item_id))

    # -- the Realtime link ----------------------------------------------------------------

    def model_error(self, err: rt.RealtimeError) -> None:
        self.counts["model_errors"] += 1
        self._notice("model_error", code=err.code, type=err.type, message=err.message[:200],
                     harmless=err.code in rt.HARMLESS_ERROR_CODES)
        if err.code == "conversation_already_has_active_response" and self.response_requested:
            self.response_requested = False
            self.pending_respond = self.pending_respond or (None, None)

    def link_lost(self) -> None:
        """The Realtime socket dropped (or the session expired)."""
        if self.state in ("ended", "failed"):
            return
        if self.readback_heard_turn is None:
            self._readback_lost("realtime_lost")
        was_up = self.link_up
        self.link_up = False
        if self.ending is not None and self.response_active is None and not self.response_requested:
            return  # the last words are out; the caller hears them without the model
        if was_up:
            self.counts["reconnects"] += 1
            self._arm(RECONNECT, self.settings.reconnect_budget_s)
        self.resume_needed = self.resume_needed or (
            self.response_active is not None or self.response_requested or self.pending_respond is not None)
        if self.response_active is not None:
            self.muted_responses.add(self.response_active)
        self.response_active = None
        self.response_requested = False
        self.pending_respond = None
        self._disarm(STALL)
        self._disarm(SILENCE)
        self._notice("realtime_lost")

    def link_ready(self, *, rotated: bool = False) -> None:
        """A new Realtime session is configured: give it the call so far, and carry on."""
        self.link_up = True
        self._disarm(RECONNECT)
        self._arm(ROTATE, self.settings.session_rotate_s)
        context = prompts.restore_context(self._task_state(), list(self.turns))
        self._model(rt.item_message("system", context), "conversation.item.create")
        self._notice("session_rotated" if rotated else "realtime_restored")
        if self.ending == "transferred" or self.state == "transfer":
            self._respond("transfer", self.job_prompts.transfer)
        elif self.resume_needed:
            self._respond("resume", prompts.RESUME)
        self.resume_needed = False
        self._check_idle(None)

    # -- timers ---------------------------------------------------------------------------

    def timer(self, name: str) -> None:
        if self.state == "ended":
            return
        if name == SILENCE:
            if self.caller_speaking or self.response_active is not None or self.playout.is_playing():
                return
            if self.reprompts == 0:
                self.reprompts = 1
                self._notice("silence", action="reprompt")
                self._respond("reprompt", prompts.REPROMPT)
            else:
                self._notice("silence", action="goodbye")
                self._respond("goodbye", prompts.GOODBYE_SILENCE)
                self._end_when_heard("silence_timeout")
        elif name == MAX_CALL:
            self._notice("max_call")
            if self.response_active is not None:
                self._cancel_active("max_call")
            self._respond("goodbye", prompts.GOODBYE_MAX)
            self._end_when_heard("max_duration")
            self._arm(MAX_CALL_GRACE, MAX_CALL_GRACE_S)
        elif name == MAX_CALL_GRACE:
            self._finish("max_duration")
        elif name == STALL:
            if self.response_active is None and not self.response_requested:
                return
            self.counts["stalls"] += 1
            self._notice("response_stalled", response_id=self.response_active)
            if self.response_active is not None:
                self._cancel_active("stall")
            self.response_active = None
            self.response_requested = False
            self._check_idle(None)
        elif name == RECONNECT:
            self._notice("realtime_gave_up")
            self._fire("fail")
            self._finish("ai_failed")
        elif name == ROTATE:
            self.rotate_due = True
            self._check_idle(None)
        elif name == HANGUP_GUARD:
            if self.ending is not None:
                self._finish(self.ending)


def state_diagram() -> str:
    """The machine above as a Mermaid state diagram, drawn by transitions (docs/architecture.md)."""
    from transitions.extensions import GraphMachine

    class _Model:
        """A bare model for GraphMachine to draw."""

    model = _Model()
    GraphMachine(model=model, states=STATES, transitions=TRANSITIONS, initial="greeting",
                 auto_transitions=False, graph_engine="mermaid", title="CallFlow")
    lines = model.get_graph().draw(None).splitlines()  # type: ignore[attr-defined]
    keep = [line for line in lines if not line.strip().startswith(("classDef", "Class "))]
    return "\n".join(line for line in keep if line.strip()).strip() + "\n"
