"""The appointments commit against a real SQLite file: rows, outbox events, the race for one slot."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trio

from appointments_helpers import CALLER, JOB, NOW, UTC, loaded, local, run
from voicebridge.business import SCHEMAS, tool_preparer
from voicebridge.engine.job import CommitError, Committed
from voicebridge.jobs.appointments.booking import BookingRequest
from voicebridge.jobs.appointments.records import booked_between, get_booking, list_bookings
from voicebridge.ops.store import Store

TUESDAY = dt.date(2026, 12, 8)


@pytest.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    s = await Store.open(db_target, schemas=SCHEMAS)
    yield s
    await s.aclose()


def booking_request(time: str = "14:00", name: str = "Sam", phone: str = CALLER) -> BookingRequest:
    t = JOB.new_task(phone)
    t.found = loaded(TUESDAY)
    assert run(t, "book_appointment", service="haircut", date="2026-12-08", time=time, name=name).ok
    return t


async def commit(store: Store, task: BookingRequest, sid: str = "CA1", now: dt.datetime = NOW) -> Committed:
    return await store.commit(lambda tx: JOB.commit(tx, sid, task, now), now=now)


async def outbox(store: Store) -> list[dict[str, Any]]:
    return await store.read(lambda tx: tx.execute("SELECT event, subject, target, payload FROM outbox ORDER BY id"))


async def test_a_booking_is_stored_with_its_webhook_and_calendar_events(store: Store) -> None:
    done = await commit(store, booking_request())
    assert done.summary == {"booking_id": 1, "change": "created", "service": "haircut",
                            "when": "Tuesday the 8th of December at 2 pm", "customer": "Sam"}
    detail = await store.read(lambda tx: get_booking(tx, 1))
    assert detail is not None
    assert (detail.row.status, detail.row.customer, detail.row.phone) == ("confirmed", "Sam", CALLER)
    assert detail.row.start == local(2026, 12, 8, 14).astimezone(UTC) and detail.uid.startswith("1-")
    webhook, calendar = await outbox(store)
    assert (webhook["event"], webhook["subject"], webhook["target"]) == ("booking.created", "booking:1", "webhook")
    body = json.loads(webhook["payload"])
    assert body == {"event": "booking.created", "booking_id": 1, "business": "Cut Above Hair Studio",
                    "service": "haircut", "service_name": "haircut", "start": "2026-12-08T14:00:00-05:00",
                    "end": "2026-12-08T14:30:00-05:00", "time_zone": "America/New_York", "customer": "Sam",
                    "phone": CALLER, "call_sid": "CA1", "price_cents": 2500}
    assert (calendar["event"], calendar["target"]) == ("calendar.put", "calendar")
    assert json.loads(calendar["payload"]) == {
        "uid": detail.uid, "start": "2026-12-08T14:00:00-05:00", "end": "2026-12-08T14:30:00-05:00",
        "tz": "America/New_York", "summary": "Haircut: Sam",
        "description": "Booked by phone (Cut Above Hair Studio), booking 1.", "sequence": 0}
    # the webhook sender never sees the calendar's rows
    due = await store.next_due(NOW + dt.timedelta(days=1))
    assert due is not None and due.event == "booking.created"
    await store.mark_delivered(due.id, delivered_at=NOW)
    assert await store.next_due(NOW + dt.timedelta(days=1)) is None
    cal = await store.next_due(NOW + dt.timedelta(days=1), targets=("calendar",))
    assert cal is not None and cal.event == "calendar.put"


async def test_move_then_cancel_keep_the_uid_and_raise_the_sequence(store: Store) -> None:
    await commit(store, booking_request())
    t = JOB.new_task(CALLER)
    mine = (await store.read(lambda tx: booked_between(tx, *loaded(TUESDAY).window)))  # type: ignore[misc]
    t.found = loaded(dt.date(2026, 12, 12), booked=tuple(mine), mine=tuple(mine))
    run(t, "find_my_bookings")
    assert run(t, "move_appointment", booking=1, date="2026-12-12", time="10:00").ok
    moved = await commit(store, t, "CA2")
    assert moved.summary["change"] == "moved" and moved.summary["when"] == "Saturday the 12th of December at 10 am"
    assert run(t, "cancel_appointment", booking=1).ok  # the task knows where the booking is now
    cancelled = await commit(store, t, "CA2")
    assert cancelled.summary["change"] == "cancelled"
    rows = await outbox(store)
    assert [(r["event"], r["target"]) for r in rows] == [
        ("booking.created", "webhook"), ("calendar.put", "calendar"), ("booking.moved", "webhook"),
        ("calendar.put", "calendar"), ("booking.cancelled", "webhook"), ("calendar.delete", "calendar")]
    uid = json.loads(rows[1]["payload"])["uid"]
    put2 = json.loads(rows[3]["payload"])
    assert (put2["uid"], put2["sequence"], put2["start"]) == (uid, 1, "2026-12-12T10:00:00-05:00")
    assert json.loads(rows[2]["payload"])["previous_start"] == "2026-12-08T14:00:00-05:00"
    assert json.loads(rows[5]["payload"]) == {"uid": uid}
    detail = await store.read(lambda tx: get_booking(tx, 1))
    assert detail is not None and detail.row.status == "cancelled" and detail.sequence == 2
    assert [c.change for c in detail.changes] == ["created", "moved", "cancelled"]
    # the slot is free again
    assert await store.read(lambda tx: booked_between(tx, *loaded(TUESDAY).window)) == []  # type: ignore[misc]


async def test_a_booking_cancelled_meanwhile_cannot_be_moved(store: Store) -> None:
    await commit(store, booking_request())
    stale = JOB.new_task(CALLER)
    mine = await store.read(lambda tx: booked_between(tx, *loaded(TUESDAY).window))  # type: ignore[misc]
    stale.found = loaded(TUESDAY, booked=tuple(mine), mine=tuple(mine))
    run(stale, "find_my_bookings")
    assert run(stale, "move_appointment", date="2026-12-08", time="16:00").ok
    await store.commit(lambda tx: tx.execute("UPDATE bookings SET status = 'cancelled'"))
    with pytest.raises(CommitError, match="booking 1 was cancelled meanwhile"):
        await commit(store, stale)


async def test_two_calls_racing_for_one_slot_book_it_once(db_target: Path | str) -> None:
    """Two daemons' stores on one database (an SQLite file, or PostgreSQL) commit the same slot at once:
    one row; the loser hears the nearest times."""
    path = db_target
    a, b = await Store.open(path, schemas=SCHEMAS), await Store.open(path, schemas=SCHEMAS)
    first, second = booking_request(name="Sam"), booking_request(name="Alex", phone="+15550002222")
    results: dict[str, Any] = {}

    async def attempt(name: str, store: Store, task: BookingRequest) -> None:
        try:
            results[name] = await commit(store, task, sid=f"CA-{name}")
        except CommitError as exc:
            results[name] = exc

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "a", a, first)
            nursery.start_soon(attempt, "b", b, second)
        rows = await a.read(lambda tx: tx.execute("SELECT customer, starts_at FROM bookings"))
        events = await b.read(lambda tx: tx.execute("SELECT event FROM outbox"))
    finally:
        await a.aclose()
        await b.aclose()
    assert len(rows) == 1
    won = [r for r in results.values() if isinstance(r, Committed)]
    lost = [r for r in results.values() if isinstance(r, CommitError)]
    assert len(won) == 1 and len(lost) == 1
    assert rows[0]["customer"] == won[0].summary["customer"]
    assert str(lost[0]) == (
        "Sorry, that time was just taken. Tuesday the 8th of December at 2 pm is already taken. The nearest free "
        "times are Tuesday the 8th of December at 2:45 pm, Tuesday the 8th of December at 3 pm or Tuesday the 8th "
        "of December at 3:15 pm.")
    assert [e["event"] for e in events] == ["booking.created", "calendar.put"]  # nothing of the loser's


async def test_each_business_has_its_own_book_on_both_engines(store: Store) -> None:
    """Two salons in one database: the same slot books at each (once), each row and outbox event is
    its business's, and one salon's call can neither see nor cancel the other's booking."""
    async def book(slug: str, name: str, sid: str) -> Committed:
        task = booking_request(name=name)
        task.found = loaded(TUESDAY, booked=tuple(await store.read(
            lambda tx: booked_between(tx, *loaded(TUESDAY).window, business=slug))))  # type: ignore[misc]
        return await store.commit(lambda tx: JOB.commit(tx, sid, task, NOW), now=NOW, business=slug)

    assert (await book("cut", "Ana", "CA1")).id == 1
    assert (await book("shear", "Bo", "CA2")).id == 2
    with pytest.raises(CommitError, match="already taken"):
        await book("shear", "Cy", "CA3")
    rows = await store.read(lambda tx: tx.execute("SELECT id, business, customer FROM bookings ORDER BY id"))
    assert [(r["id"], r["business"], r["customer"]) for r in rows] == [(1, "cut", "Ana"), (2, "shear", "Bo")]
    events = await store.read(lambda tx: tx.execute("SELECT subject, business FROM outbox ORDER BY id"))
    assert [(e["subject"], e["business"]) for e in events] == [("booking:1", "cut"), ("booking:1", "cut"),
                                                               ("booking:2", "shear"), ("booking:2", "shear")]
    assert [r.id for r in await store.read(lambda tx: list_bookings(tx, business="shear"))] == [2]
    # Ana's booking (number 1) asked for on Shear Joy's line: not theirs to cancel
    t = JOB.new_task(CALLER)
    t.found = loaded(TUESDAY, mine=tuple(await store.read(
        lambda tx: booked_between(tx, *loaded(TUESDAY).window, business="cut"))))  # type: ignore[misc]
    assert run(t, "find_my_bookings").ok and run(t, "cancel_appointment").ok
    with pytest.raises(CommitError, match="booking 1 was cancelled meanwhile"):
        await store.commit(lambda tx: JOB.commit(tx, "CA4", t, NOW), now=NOW, business="shear")
    assert (await store.read(lambda tx: get_booking(tx, 1))).row.status == "confirmed"  # type: ignore[union-attr]


async def test_a_slot_gone_stale_by_commit_time_is_refused(store: Store) -> None:
    """Read back at 10 am for 11 am, confirmed at 10:30: an hour's notice is no longer given."""
    t = JOB.new_task(CALLER)
    t.found = loaded(dt.date(2026, 12, 4))
    assert run(t, "book_appointment", service="haircut", date="today", time="11:15", name="Sam").ok
    with pytest.raises(CommitError, match="We need at least 60 minutes' notice"):
        await commit(store, t, now=NOW + dt.timedelta(minutes=30))
    assert await store.read(lambda tx: list_bookings(tx)) == []


class Calendar:
    """An in-memory BusySource: a hand-booked event, or a calendar that is down."""

    def __init__(self, busy: list[tuple[dt.datetime, dt.datetime]], fail: bool = False) -> None:
        self.events = busy
        self.fail = fail
        self.asked: list[tuple[dt.datetime, dt.datetime]] = []

    async def busy(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        self.asked.append((start, end))
        if self.fail:
            raise ConnectionError("calendar down")
        return [(s, e) for s, e in self.events if s < end and start < e]


async def test_the_lookup_before_a_tool_loads_bookings_and_calendar_busy_times(store: Store) -> None:
    """A hand-booked 3-4 pm event and a stored 2 pm booking both block (with the buffer); the caller's own booking is found."""
    await commit(store, booking_request())
    event = (local(2026, 12, 8, 15).astimezone(UTC), local(2026, 12, 8, 16).astimezone(UTC))
    calendar = Calendar([event])
    prepare = tool_preparer(JOB, store, calendar, clock=lambda: NOW)
    assert prepare is not None
    t = JOB.new_task(CALLER)
    args = json.dumps({"service": "haircut", "date": "2026-12-08"})
    await prepare(t, "check_availability", args)
    assert calendar.asked and calendar.asked[0][0] == local(2026, 12, 8, 0).astimezone(UTC)
    out = JOB.run_tool(t, "check_availability", args, NOW).output
    assert out["days"][0]["free_start_times"] == ["9 am to noon", "4:15 pm to 5:30 pm"]  # buffers kept
    await prepare(t, "find_my_bookings", "{}")
    assert JOB.run_tool(t, "find_my_bookings", "{}", NOW).output["bookings"] == [
        {"booking": 1, "what": "a haircut on Tuesday the 8th of December at 2 pm"}]
    down = tool_preparer(JOB, store, Calendar([], fail=True), clock=lambda: NOW)
    assert down is not None
    await down(t, "check_availability", args)
    assert "cannot be checked right now" in JOB.run_tool(t, "check_availability", args, NOW).output["error"]


async def test_the_calendar_feed_serves_each_confirmed_booking_as_its_latest_event(store: Store) -> None:
    """The subscribable feed shows what the calendar is sent: a moved booking at its new time, no cancelled one."""
    from voicebridge.business import feed_source

    events = feed_source(JOB, store, clock=lambda: NOW)
    assert events is not None
    await commit(store, booking_request("10:00", name="Sam"))
    second = booking_request("14:00", name="Alex", phone="+15550002222")
    await commit(store, second)
    mine = await store.read(lambda tx: booked_between(tx, *loaded(TUESDAY).window))  # type: ignore[misc]
    second.found = loaded(TUESDAY, booked=tuple(mine), mine=(mine[1],))
    run(second, "find_my_bookings")
    assert run(second, "move_appointment", date="2026-12-08", time="16:00").ok
    await commit(store, second)
    feed = [(e["summary"], e["start"], e["sequence"]) for e in await events()]
    assert feed == [("Haircut: Sam", "2026-12-08T10:00:00-05:00", 0), ("Haircut: Alex", "2026-12-08T16:00:00-05:00", 1)]
    assert run(second, "cancel_appointment").ok
    await commit(store, second)
    assert [e["summary"] for e in await events()] == ["Haircut: Sam"]


async def test_a_lookup_about_no_day_keeps_the_calendar_busy_times_of_the_request(store: Store) -> None:
    """Read back against a hand-booked event, then the caller asks what they have: the commit still
    knows the calendar's busy times."""
    event = (local(2026, 12, 8, 15).astimezone(UTC), local(2026, 12, 8, 16).astimezone(UTC))
    prepare = tool_preparer(JOB, store, Calendar([event]), clock=lambda: NOW)
    assert prepare is not None
    t = JOB.new_task(CALLER)
    args = json.dumps({"service": "haircut", "date": "2026-12-08", "time": "14:00", "name": "Sam"})
    await prepare(t, "book_appointment", args)
    assert JOB.run_tool(t, "book_appointment", args, NOW).ok
    await prepare(t, "find_my_bookings", "{}")
    assert t.found.external == (event,)
    t.start = local(2026, 12, 8, 15)  # as if the request had been for the event's hour
    with pytest.raises(CommitError, match="already taken"):
        await commit(store, t)
