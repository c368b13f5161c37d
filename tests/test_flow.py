"""CallFlow decisions: barge-in, tools, confirmation, keypad, timers and reconnection (pure)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import Order
from voicebridge.jobs.pizza.prompts import PROMPTS
from voicebridge.jobs.pizza.tools import execute_tool
from voicebridge.engine.effects import ArmTimer, Commit, Hangup, Rotate, SendCaller, SendModel
from voicebridge.engine.flow import SILENCE, STALL, RECONNECT, CallFlow, FlowSettings

MENU = load_menu(None)


def make_flow(*, greeted: bool = False) -> CallFlow:
    """A started call; with `greeted`, the greeting response has come and gone (heard)."""
    order = Order.empty(caller_number="+15551230001")
    flow = CallFlow(call_sid="CA1", stream_sid="MZ1", settings=FlowSettings(), task=order,
                    run_tool=lambda name, args: execute_tool(order, MENU, name, args, tax_rate_bp=800),
                    task_state=lambda: {"lines": len(order.lines)}, job_prompts=PROMPTS)
    flow.start()
    if greeted:
        flow.response_created("resp_greeting")
        flow.response_done("resp_greeting", "completed", None, now=0.0)
        flow.take_effects()
    return flow


def sent(effects: list[Any]) -> list[dict[str, Any]]:
    """The wire events among effects, parsed."""
    return [json.loads(e.text) for e in effects if isinstance(e, (SendModel, SendCaller))]


def kinds(effects: list[Any]) -> list[str]:
    return [m.get("type") or m.get("event") for m in sent(effects)]


def speak(flow: CallFlow, rid: str, item: str, ms: int, now: float) -> list[str]:
    """The model streams `ms` of audio for `item` in 100 ms deltas; returns the mark names."""
    flow.response_created(rid)
    return [name for n in range(ms // 100)
            if (name := flow.audio_delta(rid, item, 800, 100.0, now)) is not None]


def test_the_ai_speaks_first_with_a_greeting_response() -> None:
    """Starting a call asks the model for the greeting at once."""
    flow = make_flow()
    events = sent(flow.take_effects())
    assert events == [{"type": "response.create", "response": {"instructions": events[0]["response"]["instructions"],
                                                                "metadata": {"purpose": "greeting"}}}]


def test_speech_while_nothing_plays_changes_nothing() -> None:
    """Caller speech with no audio queued and no response in flight sends nothing."""
    flow = make_flow()
    marks = speak(flow, "resp_1", "item_1", 300, now=0.0)
    flow.response_done("resp_1", "completed", None, now=0.0)
    for m in marks:
        flow.mark(m, now=0.3)
    flow.take_effects()
    flow.speech_started(now=1.0)
    assert sent(flow.take_effects()) == []


def test_barge_in_clears_cancels_and_truncates_at_what_was_heard() -> None:
    """Speech during playback: Twilio clear, response.cancel, truncate at the played position."""
    flow = make_flow()
    marks = speak(flow, "resp_1", "item_1", 2000, now=0.0)
    flow.take_effects()
    flow.mark(marks[4], now=0.5)  # 500 ms confirmed heard at t=0.5
    flow.speech_started(now=0.62)
    events = sent(flow.take_effects())
    assert events[0] == {"event": "clear", "streamSid": "MZ1"}
    assert {"type": "response.cancel", "response_id": "resp_1"} in events
    assert {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
            "audio_end_ms": 620} in events  # 500 ms echoed + 120 ms played since (the 600 ms echo is late)
    # late deltas of the cut answer are dropped, and the flushed marks are ignored
    assert flow.audio_delta("resp_1", "item_1", 800, 100.0, now=0.63) is None
    flow.mark(marks[10], now=0.64)
    assert not flow.playout.is_playing()


def test_barge_in_twice_in_one_answer_truncates_each_item_once() -> None:
    """An answer cut, resumed in a new item, and cut again: two clears, two truncates."""
    flow = make_flow()
    marks = speak(flow, "resp_1", "item_1", 1000, now=0.0)
    flow.mark(marks[1], now=0.2)
    flow.speech_started(now=0.3)
    flow.response_done("resp_1", "cancelled", None, now=0.31)
    flow.speech_stopped()
    first = sent(flow.take_effects())
    marks = speak(flow, "resp_2", "item_2", 1000, now=1.0)
    flow.mark(marks[0], now=1.1)
    flow.speech_started(now=1.2)
    second = sent(flow.take_effects())
    assert [e["audio_end_ms"] for e in first if e.get("type") == "conversation.item.truncate"] == [300]
    assert [(e["item_id"], e["audio_end_ms"]) for e in second
            if e.get("type") == "conversation.item.truncate"] == [("item_2", 200)]
    assert flow.counts["barge_ins"] == 2


def test_tool_result_after_interruption_updates_order_without_speaking() -> None:
    """A function call from a cancelled response changes the order but asks for no new response."""
    flow = make_flow()
    speak(flow, "resp_1", "item_1", 500, now=0.0)
    flow.speech_started(now=0.1)
    flow.take_effects()
    flow.function_call("resp_1", "call_1", "add_item", json.dumps({"item": "pepperoni", "size": "large"}))
    assert len(flow.task.lines) == 1
    assert kinds(flow.take_effects()) == ["conversation.item.create"]


def _order_ready(flow: CallFlow) -> None:
    for call_id, name, args in (("c1", "add_item", {"item": "pepperoni", "size": "large"}),
                                ("c2", "set_customer", {"name": "Sam", "fulfillment": "pickup"})):
        flow.response_created(f"r_{call_id}")
        flow.function_call(f"r_{call_id}", call_id, name, json.dumps(args))
        flow.response_done(f"r_{call_id}", "completed", None, now=0.0)


def _review(flow: CallFlow) -> None:
    flow.response_created("r_rev")
    flow.function_call("r_rev", "c3", "review_order", "{}")
    flow.response_done("r_rev", "completed", None, now=0.0)


def _play_read_back(flow: CallFlow, *, heard: bool = True) -> str:
    """The model's next answer reads the order back; with `heard`, its last mark is echoed."""
    flow.response_created("r_rb")
    mark = flow.audio_delta("r_rb", "item_rb", 8000, 1000.0, now=1.0)
    assert mark is not None
    flow.response_done("r_rb", "completed", None, now=1.0)
    if heard:
        flow.mark(mark, now=2.0)
    return mark


def _caller_turn(flow: CallFlow, now: float = 3.0) -> None:
    flow.speech_started(now)
    flow.speech_stopped()


def _confirm(flow: CallFlow, response_id: str = "r_yes", call_id: str = "c4") -> list[Any]:
    flow.take_effects()
    flow.response_created(response_id)
    flow.function_call(response_id, call_id, "confirm_order", "{}")
    return flow.take_effects()


def _error_of(effects: list[Any]) -> str:
    outputs = [json.loads(e["item"]["output"]) for e in sent(effects) if e.get("type") == "conversation.item.create"]
    assert outputs and outputs[-1]["ok"] is False
    return str(outputs[-1]["error"])


def test_review_reads_back_then_confirm_saves_before_saying_confirmed() -> None:
    """review_order moves to confirming; after the read-back is heard and the caller answers,
    confirm_order commits the order before any reply."""
    flow = make_flow()
    _order_ready(flow)
    flow.response_created("r_rev")
    flow.function_call("r_rev", "c3", "review_order", "{}")
    assert flow.state == "confirming"
    out = [e for e in sent(flow.take_effects()) if e.get("type") == "conversation.item.create"][-1]
    assert "$18.36" in json.loads(out["item"]["output"])["read_back"]  # 17.00 + 8 % tax
    flow.response_done("r_rev", "completed", None, now=0.0)
    _play_read_back(flow)
    _caller_turn(flow)
    flow.take_effects()
    flow.response_created("r_yes")
    flow.function_call("r_yes", "c4", "confirm_order", "{}")
    effects = flow.take_effects()
    assert Commit("c4") in effects and kinds(effects) == []  # nothing said before the commit
    flow.committed("c4", 7, {"order_id": 7, "total_cents": 1836})
    assert json.loads(sent(flow.take_effects())[0]["item"]["output"])["order_id"] == 7
    assert flow.state == "done"


def test_confirm_before_read_back_is_refused() -> None:
    """confirm_order before review_order gets an error the model can act on."""
    flow = make_flow()
    _order_ready(flow)
    flow.take_effects()
    flow.response_created("r_x")
    flow.function_call("r_x", "c9", "confirm_order", "{}")
    output = json.loads(sent(flow.take_effects())[0]["item"]["output"])
    assert output["ok"] is False and "review_order" in output["error"]
    assert flow.state != "done"


def test_change_during_confirmation_goes_back_to_ordering() -> None:
    """Changing an item while confirming returns to ordering."""
    flow = make_flow()
    _order_ready(flow)
    flow.response_created("r_rev")
    flow.function_call("r_rev", "c3", "review_order", "{}")
    flow.response_done("r_rev", "completed", None, now=0.0)
    flow.response_created("r_chg")
    flow.function_call("r_chg", "c5", "update_item", json.dumps({"line": 1, "size": "medium"}))
    assert flow.state == "ordering"


def test_keypad_1_confirms_only_while_confirming() -> None:
    """DTMF 1 confirms during the read-back, and does nothing before it."""
    flow = make_flow()
    _order_ready(flow)
    flow.dtmf("1")
    assert not any(isinstance(e, Commit) for e in flow.take_effects())
    _review(flow)
    mark = _play_read_back(flow, heard=False)
    flow.dtmf("1")  # pressed while the read-back is still playing: not yet a yes to what was read
    assert not any(isinstance(e, Commit) for e in flow.take_effects())
    flow.mark(mark, now=2.0)  # the caller has heard all of it
    flow.dtmf("1")
    assert Commit(None) in flow.take_effects()
    assert flow.state == "done"


def test_review_and_confirm_in_one_response_are_refused_with_a_reason() -> None:
    """The one-response shortcut: the caller heard nothing between the review and the confirmation."""
    flow = make_flow()
    _order_ready(flow)
    flow.response_created("r_both")
    flow.function_call("r_both", "c3", "review_order", "{}")
    flow.take_effects()
    flow.function_call("r_both", "c4", "confirm_order", "{}")
    effects = flow.take_effects()
    assert not any(isinstance(e, Commit) for e in effects) and flow.state == "confirming"
    assert "review_order" in _error_of(effects)


def test_a_confirmation_right_after_the_read_back_waits_for_the_caller() -> None:
    """Read back and heard, but the caller has not answered: not a yes."""
    flow = make_flow()
    _order_ready(flow)
    _review(flow)
    _play_read_back(flow)
    effects = _confirm(flow)
    assert not any(isinstance(e, Commit) for e in effects)
    assert "not answered" in _error_of(effects)
    _caller_turn(flow)
    assert Commit("c5") in _confirm(flow, "r_yes2", "c5")


def test_a_confirmation_before_the_read_back_finished_playing_is_refused() -> None:
    """The read-back's audio was generated but its last mark has not come back: not heard yet."""
    flow = make_flow()
    _order_ready(flow)
    _review(flow)
    _play_read_back(flow, heard=False)
    effects = _confirm(flow)
    assert not any(isinstance(e, Commit) for e in effects) and "review_order" in _error_of(effects)


def test_a_barge_in_during_the_read_back_voids_it() -> None:
    """The caller talks over the read-back: what they say is not a yes to it; a new read-back is needed."""
    flow = make_flow()
    _order_ready(flow)
    _review(flow)
    _play_read_back(flow, heard=False)
    flow.speech_started(1.5)  # barge-in while it plays
    flow.speech_stopped()
    effects = _confirm(flow)
    assert not any(isinstance(e, Commit) for e in effects) and "review_order" in _error_of(effects)
    flow.dtmf("1")
    assert not any(isinstance(e, Commit) for e in flow.take_effects())


def test_a_change_after_the_read_back_needs_a_new_one() -> None:
    flow = make_flow()
    _order_ready(flow)
    _review(flow)
    _play_read_back(flow)
    _caller_turn(flow)
    flow.response_created("r_chg")
    flow.function_call("r_chg", "c5", "update_item", json.dumps({"line": 1, "size": "medium"}))
    flow.response_done("r_chg", "completed", None, now=4.0)
    _caller_turn(flow, 5.0)
    effects = _confirm(flow, "r_yes3", "c6")
    assert not any(isinstance(e, Commit) for e in effects) and flow.state == "ordering"


def test_keypad_0_transfers_after_the_last_words_are_heard() -> None:
    """DTMF 0: the AI says it is connecting them, and the stream ends only after that is heard."""
    flow = make_flow(greeted=True)
    flow.dtmf("0")
    assert flow.state == "transfer"
    events = sent(flow.take_effects())
    assert events[-1]["response"]["metadata"] == {"purpose": "transfer"}
    marks = speak(flow, "resp_t", "item_t", 300, now=1.0)
    flow.response_done("resp_t", "completed", None, now=1.0)
    assert not any(isinstance(e, Hangup) for e in flow.take_effects())
    for m in marks:
        flow.mark(m, now=1.3)
    assert Hangup("transferred") in flow.take_effects()


def test_silence_gets_one_reprompt_then_goodbye_and_hangup() -> None:
    """Silence timer: re-prompt once; the second time say goodbye and hang up when heard."""
    flow = make_flow(greeted=True)
    flow.timer(SILENCE)
    assert sent(flow.take_effects())[-1]["response"]["metadata"] == {"purpose": "reprompt"}
    marks = speak(flow, "r1", "i1", 200, now=1.0)
    flow.response_done("r1", "completed", None, now=1.0)
    for m in marks:
        flow.mark(m, now=1.2)
    assert ArmTimer(SILENCE, 12.0) in flow.take_effects()
    flow.timer(SILENCE)
    assert sent(flow.take_effects())[-1]["response"]["metadata"] == {"purpose": "goodbye"}
    marks = speak(flow, "r2", "i2", 200, now=20.0)
    flow.response_done("r2", "completed", None, now=20.0)
    for m in marks:
        flow.mark(m, now=20.2)
    assert Hangup("silence_timeout") in flow.take_effects()


def test_stalled_response_is_cancelled() -> None:
    """A response that stops sending is cancelled when the stall timer fires."""
    flow = make_flow()
    flow.response_created("r_s")
    flow.take_effects()
    flow.timer(STALL)
    assert {"type": "response.cancel", "response_id": "r_s"} in sent(flow.take_effects())
    assert flow.response_active is None


def test_drop_mid_answer_resumes_with_restored_context() -> None:
    """A Realtime drop during an answer: after reconnecting, the call is restored and resumed."""
    flow = make_flow()
    speak(flow, "resp_1", "item_1", 300, now=0.0)
    flow.link_lost()
    assert ArmTimer(RECONNECT, 15.0) in flow.take_effects()
    flow.link_ready()
    events = sent(flow.take_effects())
    assert events[0]["item"]["role"] == "system" and "earlier session" in events[0]["item"]["content"][0]["text"]
    assert events[1]["response"]["metadata"] == {"purpose": "resume"}


def test_reconnect_budget_exhausted_ends_with_failure() -> None:
    """If the Realtime side cannot come back in time, the call ends as ai_failed."""
    flow = make_flow()
    flow.link_lost()
    flow.timer(RECONNECT)
    assert Hangup("ai_failed") in flow.take_effects()
    assert flow.state == "ended"


@pytest.mark.parametrize("code", ["response_cancel_not_active", "conversation_already_has_active_response"])
def test_harmless_model_errors_never_end_the_call(code: str) -> None:
    """Harmless Realtime errors are counted, and the call goes on."""
    from voicebridge.edges.protocol.realtime import RealtimeError

    flow = make_flow()
    flow.model_error(RealtimeError("invalid_request_error", code, "x", None, None))
    assert not any(isinstance(e, Hangup) for e in flow.take_effects())
    assert flow.counts["model_errors"] == 1 and flow.state == "greeting"


def test_triggers_that_do_not_apply_change_nothing_and_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A change while ordering, or a review after confirmation, neither moves the machine nor warns."""
    flow = make_flow(greeted=True)
    with caplog.at_level(logging.WARNING):
        flow.response_created("r1")
        flow.function_call("r1", "c1", "add_item", json.dumps({"item": "pepperoni", "size": "large"}))
        assert flow.state == "greeting" or flow.state == "ordering"
        flow._fire("confirm")
    assert flow.state in ("greeting", "ordering")
    assert [r for r in caplog.records if r.name.startswith("transitions")] == []


def test_flows_share_one_machine_but_keep_their_own_state() -> None:
    """Every call is a model of the same machine: moving one call on leaves the others where they are,
    and a closed flow leaves the machine."""
    a, b = make_flow(greeted=True), make_flow()
    assert a.machine is b.machine
    a.speech_started(now=1.0)  # the caller talks: a moves to ordering
    assert (a.state, b.state) == ("ordering", "greeting")
    a.close()
    b.close()
    assert a not in a.machine.models and b not in b.machine.models
    a.close()  # closing twice is harmless


def test_a_due_rotation_waits_until_the_caller_has_finished_speaking() -> None:
    """Rotating mid-utterance would split what the caller says between two sessions: it waits."""
    flow = make_flow(greeted=True)
    assert flow.link_up
    flow.speech_started(now=1.0)
    flow.take_effects()
    flow.timer("rotate")
    assert not [e for e in flow.take_effects() if isinstance(e, Rotate)]
    flow.speech_stopped()
    flow.response_created("resp_2")
    flow.response_done("resp_2", "completed", None, now=2.0)  # answered, nothing left to hear
    assert [e for e in flow.take_effects() if isinstance(e, Rotate)] == [Rotate()]
    assert not flow.link_up  # caller audio is held by the session until the new link is ready
