"""Nothing is committed without the caller's own yes after hearing the read-back: whole calls.

Each call runs through the real engine between the local caller and the local Realtime model
(in memory, on trio's MockClock). The model here misbehaves in the ways a real one can: it
confirms in the same breath as the review, confirms before the caller answered, or takes a yes
said over the read-back. What is asserted is what the shop would see: saved orders.
"""

from __future__ import annotations

from trio.testing import MockClock

from calls import InMemoryCall, run_in_memory
from voicebridge.peers.scenario import Scenario, parse_scenario

ASSISTANT = """
[assistant.on_purpose]
greeting = { say = "a_greeting" }
resume = { say = "a_sorry_go_ahead" }
reprompt = { say = "a_still_there" }
goodbye = { say = "a_goodbye_silence" }
transfer = { say = "a_transfer" }
confirmed = { say = "a_confirmed", call = "end_call" }

[assistant.on_caller]
c_large_pepperoni = [{ call = "add_item", args = { item = "pepperoni", size = "large" } }, { say = "a_added_pepperoni" }]
c_yes = [{ call = "confirm_order" }, { say = "a_confirmed", call = "end_call" }]
"""


def scenario(name: str, caller: str, name_pickup_chain: str, max_s: int = 90) -> Scenario:
    text = f'name = "{name}"\ndescription = "{name}"\nmax_s = {max_s}\n' + caller + ASSISTANT + \
        f"c_name_pickup = {name_pickup_chain}\n"
    return parse_scenario(text, f"{name}.toml")


ORDER = """
[[caller]]
wait = "heard"
ms = 500
say = "c_large_pepperoni"

[[caller]]
wait = "heard"
ms = 500
say = "c_name_pickup"
"""
SET_AND_REVIEW = '{ call = "set_customer", args = { name = "Sam", fulfillment = "pickup" } }, { call = "review_order" }'


def refusals(call: InMemoryCall) -> list[str]:
    return [f["why"] for k, f in call.events if k == "confirm_refused"]


async def test_the_one_response_shortcut_is_refused_and_the_yes_after_the_read_back_commits(
        autojump_clock: MockClock) -> None:
    """Review then confirm before anything is said: refused with a reason; the read-back, the
    caller's yes, then the order is saved (once)."""
    caller = ORDER + '\n[[caller]]\nwait = "heard"\nms = 500\nsay = "c_yes"\n'
    chain = f'[{SET_AND_REVIEW}, {{ call = "confirm_order" }}, {{ say = "a_readback" }}]'
    call = await run_in_memory(scenario("shortcut", caller, chain))
    assert refusals(call) == ["not_read_back"]
    assert len(call.saved_orders) == 1 and call.result.outcome == "completed"
    kinds = call.kinds()
    assert kinds.index("readback_heard") < kinds.index("committed")


async def test_a_confirmation_before_the_caller_answers_commits_nothing(autojump_clock: MockClock) -> None:
    """The model reads back and confirms in one breath, then tries again; the caller stays silent:
    nothing saved, and the call ends as a silent one."""
    caller = ORDER + '\n[[caller]]\nwait = "heard"\nms = 500\nsilence = true\n'
    chain = (f'[{SET_AND_REVIEW}, {{ say = "a_readback", call = "confirm_order" }}, {{ call = "confirm_order" }}, '
             '{ say = "a_still_there" }]')
    call = await run_in_memory(scenario("no_answer", caller, chain))
    assert refusals(call) == ["not_read_back", "not_read_back"]
    assert call.saved_orders == [] and call.result.outcome == "silence_timeout"


async def test_a_yes_said_over_the_read_back_commits_nothing(autojump_clock: MockClock) -> None:
    """The caller says yes 800 ms into the read-back: a barge-in; the read-back is void."""
    caller = ORDER + '\n[[caller]]\nwait = "playing"\nms = 800\nsay = "c_yes"\n' \
        '\n[[caller]]\nwait = "time"\nms = 6000\nhangup = true\n'
    chain = f'[{SET_AND_REVIEW}, {{ say = "a_readback" }}]'
    call = await run_in_memory(scenario("yes_over_read_back", caller, chain))
    assert "readback_void" in call.kinds() and refusals(call) == ["not_read_back"]
    assert call.saved_orders == [] and call.result.outcome == "ended_no_order"  # the stored outcome tells the truth


async def test_keypad_1_during_the_read_back_commits_nothing(autojump_clock: MockClock) -> None:
    caller = ORDER + '\n[[caller]]\nwait = "playing"\nms = 500\ndtmf = "1"\n' \
        '\n[[caller]]\nwait = "heard"\nms = 500\nhangup = true\n'
    chain = f'[{SET_AND_REVIEW}, {{ say = "a_readback" }}]'
    call = await run_in_memory(scenario("keypad_over_read_back", caller, chain))
    assert call.saved_orders == [] and "committed" not in call.kinds()
    assert any(k == "confirm_refused" and f.get("via") == "keypad" for k, f in call.events)
