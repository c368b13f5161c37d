"""Whole calls through the real call engine, between the local caller and Realtime peers.

Every socket is in memory and the clock is trio's MockClock, so each call's minute of audio runs
in a fraction of a second; what is asserted is what each side really saw on the wire.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
from trio.testing import MockClock

from calls import MENU, InMemoryCall, call_setup, run_in_memory
from openai_strict import validate_client
from voicebridge.engine.flow import shared_machine
from voicebridge.peers.clips import load_clip
from voicebridge.peers.realtime_server import RealtimePeer
from voicebridge.peers.scenario import load_scenario, parse_scenario
from voicebridge.edges.transport import MessageStream


CHUNK_MS = 100  # the local Realtime peer's delta size: the truncation bound is one chunk


def stale_bytes(call: InMemoryCall, clip: str, clear_index: int) -> int:
    """Bytes of `clip` that reached the caller after the clear that cut it (must be 0)."""
    audio = load_clip(clip).audio
    return sum(c.length for c in call.report.received
               if c.clears_before > clear_index and c.length and c.audio in audio)


def truncation_errors(call: InMemoryCall) -> list[float]:
    """For each truncate the bridge sent: its audio_end_ms minus what the caller had really heard."""
    conn_truncates = [t for conn in call.peer.connections for t in conn.truncates]
    cut_answers = [a for a in call.report.answers if a.cleared]
    assert len(conn_truncates) == len(cut_answers)
    return [t.audio_end_ms - call.report.answer_played_bytes(a.index) / 8 for t, a in zip(conn_truncates, cut_answers)]


async def test_full_order_is_confirmed_with_exact_total_and_hangs_up(autojump_clock: MockClock) -> None:
    """A whole order: read-back with the 8% tax total, confirmed, saved, goodbye heard, hang-up."""
    call = await run_in_memory("full_order")
    assert call.result.outcome == "completed"
    assert len(call.saved_orders) == 1
    order = call.saved_orders[0]
    assert [(line.item, line.size) for line in order.lines] == [("pepperoni", "large"), ("margherita", "medium")]
    assert order.totals(MENU, 800).total_cents == 3294
    read_back = [f["text"] for k, f in call.events if k == "transcript" and "total" in f["text"]]
    assert read_back and "total $32.94" in read_back[0]
    # the goodbye was heard in full before the bridge ended the stream
    assert call.report.ended_by == "bridge"
    assert load_clip("a_confirmed").audio in call.report.played_audio()


async def test_every_client_event_sent_in_a_call_validates_against_openai_models(autojump_clock: MockClock) -> None:
    """Each event the bridge sent during whole calls validates strictly against the official models."""
    sent: list[str] = []

    class Tap:
        def __init__(self, inner: MessageStream) -> None:
            self.inner = inner

        async def send(self, text: str) -> None:
            sent.append(text)
            await self.inner.send(text)

        async def receive(self) -> str:
            return await self.inner.receive()

        async def aclose(self, code: int = 1000, reason: str = "") -> None:
            await self.inner.aclose(code, reason)

    for name in ("demo", "barge_in_twice", "realtime_drop", "change_of_mind"):
        peer = RealtimePeer(load_scenario(name))
        setup = call_setup(peer)

        async def tapped(nursery: trio.Nursery, connect: Any = setup.connect) -> MessageStream:
            return Tap(await connect(nursery))

        await run_in_memory(name, peer=peer, setup=attrs.evolve(setup, connect=tapped))
    types = {json.loads(t)["type"] for t in sent}
    assert {"session.update", "input_audio_buffer.append", "response.create", "response.cancel",
            "conversation.item.truncate", "conversation.item.create"} <= types
    for text in sent:
        validate_client(text)  # raises on any unknown type, bad field, or extra key


async def test_barge_in_during_greeting_stops_the_ai_at_once(autojump_clock: MockClock) -> None:
    """Talking over the greeting: Twilio clear, truncate at what was heard, no stale audio after."""
    call = await run_in_memory("barge_in_greeting")
    assert len(call.report.clears) == 1
    (error,) = truncation_errors(call)
    assert abs(error) <= CHUNK_MS
    assert stale_bytes(call, "a_greeting", 0) == 0
    assert call.result.counts["barge_ins"] == 1
    texts = [f["text"] for k, f in call.events if k == "transcript" and f["role"] == "assistant"]
    assert "Sure, what would you like to order?" in texts


async def test_barge_in_twice_in_one_answer(autojump_clock: MockClock) -> None:
    """The specials are interrupted, resumed, and interrupted again: each cut is clean."""
    call = await run_in_memory("barge_in_twice")
    assert len(call.report.clears) == 2
    errors = truncation_errors(call)
    assert len(errors) == 2 and all(abs(e) <= CHUNK_MS for e in errors)
    assert stale_bytes(call, "a_specials", 0) == 0
    assert stale_bytes(call, "a_specials_resume", 1) == 0
    conn = call.peer.connections[0]
    assert [c.reason for c in conn.cancels] == ["client_cancelled", "client_cancelled"]
    assert not [e for e in conn.errors_sent if e.code not in ("response_cancel_not_active",)]


async def test_barge_in_after_the_model_paused_mid_answer_counts_all_it_said(autojump_clock: MockClock) -> None:
    """The greeting pauses 1.5 s after 400 ms of audio (the caller hears all of it and its buffer runs
    dry), goes on, and is cut 600 ms later: the truncate counts the audio before the pause too."""
    text = load_scenario("barge_in_greeting")
    scenario = parse_scenario(
        'name = "pause"\nmax_s = 60\n[[caller]]\nwait = "playing"\nms = 600\nsay = "c_hello_order"\n'
        '[[caller]]\nwait = "heard"\nms = 800\nhangup = true\n'
        '[[faults]]\nkind = "stall"\nresponse = 1\nafter_audio_ms = 400\nresume_after_ms = 1500\n'
        '[assistant.on_purpose]\ngreeting = { say = "a_greeting" }\n'
        '[assistant.on_caller]\nc_hello_order = { say = "a_what_order" }\n', "pause.toml")
    assert text.on_purpose["greeting"] == scenario.on_purpose["greeting"]
    call = await run_in_memory(scenario)
    conn = call.peer.connections[0]
    assert conn.faults == ["stall in response 1 after 400 ms of audio"]
    # The caller (like Twilio) knows no items: the pause splits what it heard into two answers.
    first, resumed = call.report.answers[:2]
    assert resumed.cleared and not first.cleared
    heard_ms = (call.report.answer_played_bytes(first.index) + call.report.answer_played_bytes(resumed.index)) / 8
    assert heard_ms >= 900
    (cut,) = conn.truncates
    assert abs(cut.audio_end_ms - heard_ms) <= CHUNK_MS
    assert stale_bytes(call, "a_greeting", 0) == 0


async def test_silent_caller_gets_one_reprompt_then_goodbye(autojump_clock: MockClock) -> None:
    """Silence: one "are you still there?", then a goodbye, then the bridge hangs up."""
    call = await run_in_memory("silent_caller", silence_timeout_s=6.0)
    assert call.result.outcome == "silence_timeout"
    purposes = [r.purpose for r in call.peer.connections[0].responses]
    assert purposes == ["greeting", "reprompt", "goodbye"]
    assert load_clip("a_goodbye_silence").audio in call.report.played_audio()
    assert call.report.ended_by == "bridge"


async def test_realtime_drop_mid_answer_reconnects_and_keeps_the_order(autojump_clock: MockClock) -> None:
    """The Realtime socket drops mid-answer; a new session gets the order so far; the order completes."""
    call = await run_in_memory("realtime_drop")
    assert call.result.outcome == "completed"
    assert len(call.peer.connections) == 2
    restored = call.peer.connections[1].items_created[0]
    assert restored["role"] == "system"
    text = restored["content"][0]["text"]
    assert "pepperoni" in text and "margherita" in text
    assert call.saved_orders[0].totals(MENU, 800).total_cents == 3294
    assert call.result.counts["reconnects"] == 1


async def test_caller_hanging_up_mid_answer_closes_the_realtime_socket_at_once(autojump_clock: MockClock) -> None:
    """The caller hangs up during an answer: the call ends and its Realtime socket closes within 1 s."""
    call = await run_in_memory("hangup_mid_answer")
    assert call.result.outcome == "caller_hung_up"
    conn = call.peer.connections[0]
    assert conn.closed_at is not None and conn.closed_by == "client"
    hangup_at = call.report.t0 + call.report.end_time
    assert conn.closed_at - hangup_at < 1.0


async def test_keypad_0_transfers_to_a_person(autojump_clock: MockClock) -> None:
    """DTMF 0: the AI says it is connecting them; the stream ends as transferred once that is heard."""
    call = await run_in_memory("dtmf_transfer")
    assert call.result.outcome == "transferred"
    assert load_clip("a_transfer").audio in call.report.played_audio()


async def test_change_of_mind_during_read_back_then_keypad_1(autojump_clock: MockClock) -> None:
    """A change during confirmation goes back to ordering; pressing 1 confirms the new total."""
    call = await run_in_memory("change_of_mind")
    assert call.result.outcome == "completed"
    order = call.saved_orders[0]
    assert [(line.item, line.size) for line in order.lines] == [("pepperoni", "large"), ("margherita", "large")]
    assert order.totals(MENU, 800).total_cents == 3564


async def test_order_that_cannot_be_saved_is_never_announced_as_confirmed(autojump_clock: MockClock) -> None:
    """If the store fails, the caller does not hear "confirmed"."""
    call = await run_in_memory("full_order", save_fails=True)
    assert "commit_failed" in call.kinds() and "committed" not in call.kinds()
    outputs = [json.loads(i["output"]) for i in call.peer.connections[0].items_created
               if i.get("type") == "function_call_output"]
    assert any(o["ok"] is False and "could not be saved" in o["error"] for o in outputs)
    assert not any(o.get("status") == "confirmed" for o in outputs)
    said = [f["text"] for k, f in call.events if k == "transcript" and f["role"] == "assistant"]
    assert not any("confirmed" in text for text in said)


async def test_fifty_simultaneous_calls_do_not_affect_each_other(autojump_clock: MockClock) -> None:
    """50 concurrent calls (mixed scenarios): each gets its own outcome and its own order."""
    names = ["full_order", "barge_in_greeting", "hangup_mid_answer", "dtmf_transfer", "change_of_mind"] * 10
    results: dict[int, InMemoryCall] = {}
    models_before = len(shared_machine().models)

    async def one(i: int, name: str) -> None:
        results[i] = await run_in_memory(name)

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(names):
            nursery.start_soon(one, i, name)
    expected = {"full_order": "completed", "barge_in_greeting": "caller_hung_up", "hangup_mid_answer": "caller_hung_up",
                "dtmf_transfer": "transferred", "change_of_mind": "completed"}
    for i, name in enumerate(names):
        call = results[i]
        assert call.result.outcome == expected[name], (i, name)
        totals = [o.totals(MENU, 800).total_cents for o in call.saved_orders]
        assert totals == {"full_order": [3294], "change_of_mind": [3564]}.get(name, [])
        assert call.report.protocol_errors == []
    # Every call's flow left the shared state machine when its call ended: nothing keeps it alive.
    assert len(shared_machine().models) == models_before


async def test_asking_for_a_person_in_words_transfers(autojump_clock: MockClock) -> None:
    """"Can I talk to someone": the model calls transfer_to_human; the AI says it is connecting them, then transferred."""
    call = await run_in_memory("voice_transfer")
    assert call.result.outcome == "transferred"
    assert load_clip("a_transfer").audio in call.report.played_audio()
