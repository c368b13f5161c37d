"""Whole appointment calls through the real call engine, in memory on trio's MockClock.

The local caller speaks the recorded clips, the local Realtime peer answers with the scenario's
tool calls, and the bridge runs the appointments job against a real SQLite store (the lookups
before each tool and the commit after the yes), at a fixed business time: Friday 4 December
2026, 10 am in New York. What is asserted is what the caller heard and what the store holds.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import pytest
import trio
from trio.testing import MockClock

from appointments_helpers import CALLER, JOB, NOW, UTC, loaded, local, run
from calls import _servers, memory_connector
from voicebridge.business import SCHEMAS, tool_preparer
from voicebridge.config import Config
from voicebridge.daemon import make_call_setup
from voicebridge.engine.job import Committed
from voicebridge.engine.session import CallHooks, CallResult, run_call
from voicebridge.edges.transport import memory_stream_pair
from voicebridge.jobs.appointments.booking import BookingRequest
from voicebridge.jobs.appointments.records import get_booking
from voicebridge.ops.store import Store
from voicebridge.peers.clips import load_clip
from voicebridge.peers.realtime_server import RealtimePeer
from voicebridge.peers.scenario import Scenario, load_scenario, parse_scenario
from voicebridge.peers.twilio_caller import CallerReport, TwilioCaller


@attrs.define
class BookingCall:
    result: CallResult
    report: CallerReport
    events: list[tuple[str, dict[str, Any]]]

    def said(self) -> list[str]:
        return [f["text"] for k, f in self.events if k == "transcript" and f["role"] == "assistant"]

    def tools(self) -> list[tuple[str, bool, str | None]]:
        return [(f["name"], f["ok"], f["intent"]) for k, f in self.events if k == "tool"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "calls.sqlite3", schemas=SCHEMAS, threaded=False)
    yield s
    await s.aclose()


def sid(n: int) -> str:
    return f"CA{n:032x}"


async def booking_call(store: Store, scenario: Scenario, sid: str, *,
                       commit_first: BookingRequest | None = None) -> BookingCall:
    """One call of `scenario` with the appointments job, its lookups and commits on `store`
    (`commit_first`: another line's booking, committed just before this call's)."""
    peer = RealtimePeer(scenario)
    setup = make_call_setup(Config(), JOB, memory_connector(peer), wall_clock=lambda: NOW,
                            prepare_tool=tool_preparer(JOB, store, clock=lambda: NOW))
    events: list[tuple[str, dict[str, Any]]] = []

    async def commit(call_sid: str, task: Any) -> Committed:
        if commit_first is not None:
            other = commit_first
            await store.commit(lambda tx: JOB.commit(tx, "CA-other-line", other, NOW), now=NOW)
        return await store.commit(lambda tx: JOB.commit(tx, call_sid, task, NOW), now=NOW)

    hooks = CallHooks(on_event=lambda s, kind, fields: events.append((kind, fields)), commit=commit)
    bridge_end, caller_end = memory_stream_pair()
    caller = TwilioCaller(scenario, call_sid=sid)
    out: dict[str, Any] = {}

    async def bridge() -> None:
        out["result"] = await run_call(bridge_end, setup, hooks)

    async def phone() -> None:
        out["report"] = await caller.run_stream(caller_end, {"From": CALLER, "To": scenario.to_number})

    server = _servers[id(peer)]
    with trio.fail_after(scenario.max_s + 60):
        async with trio.open_nursery() as peers:
            server.nursery = peers
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge)
                nursery.start_soon(phone)
            await trio.sleep(1.0)
            peers.cancel_scope.cancel()
    _servers.pop(id(peer), None)
    return BookingCall(out["result"], out["report"], events)


def scenario(name: str, on_caller: str, *, confirm: str = 'say = "c_yes"') -> Scenario:
    """A call that asks with one clip, hears the read-back, and confirms (by voice or keypad)."""
    clip = on_caller.split(" = ", 1)[0].strip()
    return parse_scenario(f"""
name = "{name}"
job = "appointments"
max_s = 120
[[caller]]
wait = "heard"
ms = 500
say = "{clip}"
[[caller]]
wait = "heard"
ms = 500
{confirm}
[assistant.on_purpose]
greeting = {{ say = "a_appt_greeting" }}
confirmed = {{ say = "a_appt_done", call = "end_call" }}
reprompt = {{ say = "a_still_there" }}
goodbye = {{ say = "a_goodbye_silence" }}
[assistant.on_caller]
{on_caller}
c_yes = [{{ call = "confirm_booking" }}, {{ say = "a_appt_done", call = "end_call" }}]
""", f"{name}.toml")


MOVE = scenario("move", 'c_move_haircut = [{ call = "find_my_bookings" }, '
                        '{ call = "move_appointment", args = { date = "2026-12-12", time = "10:00" } }, '
                        '{ say = "a_appt_readback" }]')
CANCEL = scenario("cancel", 'c_cancel = [{ call = "find_my_bookings" }, { call = "cancel_appointment" }, '
                            '{ say = "a_appt_readback" }]')


async def test_a_booking_call_books_moves_and_cancels_across_three_calls(
        autojump_clock: MockClock, store: Store) -> None:
    """Book by voice; call back and move it (found by caller ID); call back and cancel it."""
    booked = await booking_call(store, load_scenario("appointments"), sid(1))
    assert booked.result.outcome == "completed" and booked.result.committed_id == 1
    assert booked.tools() == [("check_availability", True, None), ("book_appointment", True, "review"),
                              ("confirm_booking", True, "confirm"), ("end_call", True, "end_call")]
    assert ("Here is what I have: a haircut on Tuesday the 8th of December at 2 pm, for Sam. It costs $25.00. "
            "Shall I book it?") in booked.said()
    assert load_clip("a_appt_done").audio in booked.report.played_audio()  # the goodbye was heard
    detail = await store.read(lambda tx: get_booking(tx, 1))
    assert detail is not None and detail.row.start == local(2026, 12, 8, 14).astimezone(UTC)
    assert detail.row.customer == "Sam" and detail.row.phone == CALLER and detail.call_sid == sid(1)

    moved = await booking_call(store, MOVE, sid(2))
    assert moved.result.outcome == "completed"
    assert ("Here is what I have: your haircut on Tuesday the 8th of December at 2 pm moves to Saturday the 12th "
            "of December at 10 am. Shall I move it?") in moved.said()
    detail = await store.read(lambda tx: get_booking(tx, 1))
    assert detail is not None and detail.row.start == local(2026, 12, 12, 10).astimezone(UTC) and detail.sequence == 1

    cancelled = await booking_call(store, CANCEL, sid(3))
    assert cancelled.result.outcome == "completed"
    assert ("Here is what I have: cancel your haircut on Saturday the 12th of December at 10 am. "
            "Shall I cancel it?") in cancelled.said()
    detail = await store.read(lambda tx: get_booking(tx, 1))
    assert detail is not None and detail.row.status == "cancelled"
    assert [(e.event, e.target) for e in detail.events] == [
        ("booking.created", "webhook"), ("calendar.put", "calendar"), ("booking.moved", "webhook"),
        ("calendar.put", "calendar"), ("booking.cancelled", "webhook"), ("calendar.delete", "calendar")]


async def test_pressing_1_after_the_read_back_confirms_the_booking(autojump_clock: MockClock, store: Store) -> None:
    call = await booking_call(store, load_scenario("appointment_keypad"), sid(11))
    assert call.result.outcome == "completed" and call.result.committed_id == 1
    assert ("dtmf", {"digit": "1"}) in call.events
    assert [k for k, _ in call.events if k == "committed"] == ["committed"]
    assert load_clip("a_appt_done").audio in call.report.played_audio()
    rows = await store.read(lambda tx: tx.execute("SELECT customer, status FROM bookings"))
    assert rows == [{"customer": "Sam", "status": "confirmed"}]


async def test_nothing_is_written_without_the_callers_yes(autojump_clock: MockClock, store: Store) -> None:
    """The caller hears the read-back and hangs up: no booking, no outbox row."""
    text = scenario("no_yes", 'c_book_haircut = [{ call = "book_appointment", args = { service = "haircut", '
                              'date = "tuesday", time = "14:00", name = "Sam" } }, { say = "a_appt_readback" }]',
                    confirm="hangup = true")
    call = await booking_call(store, text, sid(21))
    assert call.result.outcome == "caller_hung_up" and call.result.committed_id is None
    assert await store.read(lambda tx: tx.execute("SELECT id FROM bookings UNION ALL SELECT id FROM outbox")) == []


async def test_a_slot_taken_by_another_call_before_the_yes_is_offered_elsewhere(
        autojump_clock: MockClock, store: Store) -> None:
    """Another line books Tuesday 2 pm between this caller's read-back and yes: the caller hears the
    nearest free times instead of a confirmation, and the other line's booking stands alone."""
    taken = scenario("taken", 'c_book_haircut = [{ call = "book_appointment", args = { service = "haircut", '
                              'date = "tuesday", time = "14:00", name = "Sam" } }, { say = "a_appt_readback" }]')
    other = JOB.new_task("+15550009999")
    other.found = loaded(dt.date(2026, 12, 8))
    assert run(other, "book_appointment", service="haircut", date="tuesday", time="14:00", name="Alex").ok
    call = await booking_call(store, taken, sid(31), commit_first=other)
    assert [f["error"] for k, f in call.events if k == "commit_failed"] == ["refused"]
    assert call.result.committed_id is None and call.result.outcome == "ended_no_order"
    assert ("Sorry, that time was just taken. Tuesday the 8th of December at 2 pm is already taken. The nearest free "
            "times are Tuesday the 8th of December at 2:45 pm, Tuesday the 8th of December at 3 pm or Tuesday the "
            "8th of December at 3:15 pm.") in call.said()
    rows = await store.read(lambda tx: tx.execute("SELECT customer FROM bookings"))
    assert rows == [{"customer": "Alex"}]


async def test_a_lookup_that_hangs_is_cut_off_and_the_tool_says_it_cannot_check(autojump_clock: MockClock) -> None:
    """The engine bounds the lookup before a tool (5 s); the tool then answers an error the caller hears."""
    from calls import call_setup, run_in_memory
    from voicebridge.engine.session import PREPARE_FAILED

    started: list[float] = []

    async def hang(task: Any, name: str, arguments: str) -> None:
        started.append(trio.current_time())
        if name == "add_item":
            await trio.sleep_forever()

    peer = RealtimePeer(load_scenario("full_order"))
    setup = attrs.evolve(call_setup(peer), prepare_tool=hang)
    call = await run_in_memory("full_order", peer=peer, setup=setup)
    tools = [(f["name"], f["ok"]) for k, f in call.events if k == "tool"]
    assert ("add_item", False) in tools and ("set_customer", True) in tools
    said = [f["text"] for k, f in call.events if k == "transcript" and f["role"] == "assistant"]
    assert PREPARE_FAILED in said
    assert len(started) == len(tools)  # every tool waited for its lookup first
