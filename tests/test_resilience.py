"""Timeouts, drops and rotation, in whole calls on trio's MockClock (no real sleeping)."""

from __future__ import annotations

from typing import Any

import attrs
import trio
from trio.testing import MockClock

from calls import call_setup, run_in_memory
from voicebridge.peers.clips import load_clip
from voicebridge.peers.realtime_server import RealtimePeer
from voicebridge.peers.scenario import load_scenario, parse_scenario

ORDER_SCRIPT = """
[[caller]]
wait = "heard"
ms = 500
say = "c_large_pepperoni"

[[caller]]
wait = "heard"
ms = 500
say = "c_name_pickup"

[[caller]]
wait = "heard"
ms = 500
say = "c_yes"

[assistant.on_purpose]
greeting = { say = "a_greeting" }
resume = { say = "a_sorry_go_ahead" }
reprompt = { say = "a_still_there" }
goodbye = { say = "a_goodbye_silence" }

[assistant.on_caller]
c_large_pepperoni = [{ call = "add_item", args = { item = "pepperoni", size = "large" } }, { say = "a_added_pepperoni" }]
c_name_pickup = [{ call = "set_customer", args = { name = "Sam", fulfillment = "pickup" } }, { call = "review_order" }, { say = "a_readback" }]
c_yes = [{ call = "confirm_order" }, { say = "a_confirmed", call = "end_call" }]
"""


def order_with(faults: str, name: str = "t") -> object:
    return parse_scenario(f'name = "{name}"\nmax_s = 120\n' + ORDER_SCRIPT + faults, f"{name}.toml")


async def test_drop_during_the_greeting_reconnects_and_completes(autojump_clock: MockClock) -> None:
    """The Realtime socket drops 500 ms into the greeting: the call reconnects and the order completes."""
    call = await run_in_memory(order_with('[[faults]]\nkind = "drop"\nresponse = 1\nafter_audio_ms = 500\n'))
    assert call.result.outcome == "completed" and len(call.peer.connections) == 2
    assert [r.purpose for r in call.peer.connections[1].responses][:1] == ["resume"]


async def test_drop_during_a_tool_call_keeps_the_order_so_far(autojump_clock: MockClock) -> None:
    """A drop in the response that calls a tool: the new session is told the order the bridge holds.

    The scripted model does not pick its tool chain up again after the drop (a real one would
    call review_order): the bridge then refuses to confirm an order that was never read back.
    """
    call = await run_in_memory(order_with('[[faults]]\nkind = "drop"\nresponse = 4\n'))
    restored = call.peer.connections[1].items_created[0]["content"][0]["text"]
    assert "pepperoni" in restored and "Sam" in restored and "pickup" in restored
    assert call.saved_orders == []
    assert call.result.outcome == "ended_no_order"


async def test_drop_between_answers_needs_no_resume(autojump_clock: MockClock) -> None:
    """A drop while nobody is talking: the new session gets the context but does not speak by itself."""
    call = await run_in_memory(order_with('[[faults]]\nkind = "drop"\nresponse = 3\nafter_audio_ms = 60000\n'))
    assert call.result.outcome == "completed"
    assert len(call.peer.connections) == 2


async def test_realtime_that_cannot_come_back_ends_the_call_as_failed(autojump_clock: MockClock) -> None:
    """After a drop, every reconnect is refused: within the budget the call ends as ai_failed."""
    faults = ('[[faults]]\nkind = "drop"\nresponse = 2\n\n'
              '[[faults]]\nkind = "refuse"\ntimes = 1000\n')
    start = trio.current_time()
    call = await run_in_memory(order_with(faults), reconnect_budget_s=5.0)
    assert call.result.outcome == "ai_failed"
    assert call.report.ended_by == "bridge"
    assert trio.current_time() - start < 30


async def test_stalled_response_is_cancelled_and_the_call_goes_on(autojump_clock: MockClock) -> None:
    """The model stops sending mid-greeting: at the stall timeout the bridge cancels it, then re-prompts."""
    silent = load_scenario("silent_caller")
    scenario = parse_scenario(
        'name = "stall"\nmax_s = 120\n[[caller]]\nwait = "time"\nms = 0\nsilence = true\n'
        '[[faults]]\nkind = "stall"\nresponse = 1\nafter_audio_ms = 400\n'
        '[assistant.on_purpose]\ngreeting = { say = "a_greeting" }\nreprompt = { say = "a_still_there" }\n'
        'goodbye = { say = "a_goodbye_silence" }\n', "stall.toml")
    assert silent.on_purpose.keys() >= scenario.on_purpose.keys()
    start = trio.current_time()
    call = await run_in_memory(scenario, response_stall_timeout_s=3.0, silence_timeout_s=4.0)
    conn = call.peer.connections[0]
    assert conn.cancels and conn.cancels[0].reason == "client_cancelled"
    stalled_at = conn.cancels[0].time - start
    assert 3.0 <= stalled_at < 4.0  # the stall timeout, counted from the last delta
    assert "response_stalled" in call.kinds()
    assert [r.purpose for r in conn.responses] == ["greeting", "reprompt", "goodbye"]
    assert call.result.outcome == "silence_timeout"


async def test_connect_deadline_ends_the_call_when_the_session_never_opens(autojump_clock: MockClock) -> None:
    """The Realtime side accepts but never becomes ready: the call ends as ai_failed at the deadline."""
    peer = RealtimePeer(load_scenario("full_order"))

    async def never_ready(nursery: trio.Nursery) -> object:
        from voicebridge.edges.transport import memory_stream_pair

        ours, _theirs = memory_stream_pair()
        nursery.start_soon(trio.sleep_forever)
        return ours

    from calls import call_setup
    import attrs

    setup = attrs.evolve(call_setup(peer), connect=never_ready, connect_timeout_s=3.0)
    start = trio.current_time()
    call = await run_in_memory("full_order", peer=peer, setup=setup)
    assert call.result.outcome == "ai_failed"
    assert 3.0 <= trio.current_time() - start < 10.0


async def test_maximum_call_length_says_goodbye_and_hangs_up(autojump_clock: MockClock) -> None:
    """A call that reaches VOICEBRIDGE_MAX_CALL_S gets a goodbye and ends as max_duration."""
    call = await run_in_memory("silent_caller", max_call_s=8.0, silence_timeout_s=60.0)
    assert call.result.outcome == "max_duration"
    assert call.result.duration_s < 8.0 + 25.0
    assert [r.purpose for r in call.peer.connections[0].responses] == ["greeting", "goodbye"]


async def test_session_is_rotated_between_answers(autojump_clock: MockClock) -> None:
    """Before the session's maximum age, the bridge moves to a fresh session between answers."""
    call = await run_in_memory("full_order", session_rotate_s=10.0)
    assert call.result.outcome == "completed"
    assert len(call.peer.connections) >= 2
    first = call.peer.connections[0]
    assert first.closed_by == "client" and first.close_code == 1000
    # rotation happened while nothing was being said: no answer was cut
    assert all(r.status != "cancelled" for c in call.peer.connections for r in c.responses)
    assert "session_rotated" in call.kinds()


async def test_caller_audio_during_a_slow_rotation_reaches_the_new_session(autojump_clock: MockClock) -> None:
    """The new session takes 1.5 s to open while the caller starts talking: nothing they said is lost.

    Caller audio is held while the rotation is being set up and given to the new session once it
    is ready, so its VAD hears the whole utterance and the order goes through."""
    peer = RealtimePeer(load_scenario("full_order"))
    setup = call_setup(peer, session_rotate_s=10.0)
    fast = setup.connect
    opened = 0

    async def slow_after_the_first(nursery: trio.Nursery) -> Any:
        nonlocal opened
        opened += 1
        if opened > 1:
            await trio.sleep(1.5)
        return await fast(nursery)

    call = await run_in_memory("full_order", peer=peer, setup=attrs.evolve(setup, connect=slow_after_the_first))
    assert len(peer.connections) >= 2 and "session_rotated" in call.kinds()
    assert call.result.outcome == "completed"
    # Every caller frame from the first session's start to the hang-up reached one of the sessions.
    heard_ms = sum(c.audio_ms_in for c in peer.connections)
    sent_ms = call.report.media_frames_sent * 20
    assert heard_ms >= sent_ms - 200, (heard_ms, sent_ms)


async def test_pcm16_path_completes_an_order(autojump_clock: MockClock) -> None:
    """With VOICEBRIDGE_AUDIO_FORMAT=pcm16 the model gets PCM16 24 kHz and the caller µ-law 8 kHz."""
    call = await run_in_memory("full_order", audio_format="pcm16")
    assert call.result.outcome == "completed"
    assert call.peer.connections[0].session_updates[0]["audio"]["input"]["format"] == {
        "type": "audio/pcm", "rate": 24000}
    heard = call.report.played_audio()
    assert len(heard) > 8000 * 10  # ten seconds and more of the AI, converted back to µ-law
    assert load_clip("a_greeting").audio not in heard  # it went through the resamplers, not copied
