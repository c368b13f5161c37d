"""The appointments job on a real CalDAV calendar (Radicale on 127.0.0.1), checked by an independent client.

An event a person booked by hand blocks its slot for the phone; the phone's booking, move and
cancellation reach the calendar through the outbox at the business's wall-clock time.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from appointments_helpers import CALLER, JOB, NOW, TZ, loaded, run
from caldav_server import PASSWORD, USER, Radicale, put_by_hand, stored_events
from voicebridge.business import SCHEMAS, tool_preparer
from voicebridge.edges.calendar import CalDavCalendar
from voicebridge.ops.outbox import CalendarWorker
from voicebridge.ops.store import Store

HAND_BOOKED = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//A person's calendar app//EN
BEGIN:VEVENT
UID:walk-in@person.example
DTSTAMP:20261201T120000Z
DTSTART;TZID=America/New_York:20261208T100000
DTEND;TZID=America/New_York:20261208T110000
SUMMARY:Walk-in colour
END:VEVENT
END:VCALENDAR
"""


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-appointments"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "cal.sqlite3", schemas=SCHEMAS)
    yield s
    await s.aclose()


async def test_hand_booked_events_block_and_phone_bookings_land_in_the_calendar(radicale: Radicale, store: Store) -> None:
    url = radicale.new_calendar()
    await put_by_hand(url, "walk-in.ics", HAND_BOOKED)
    calendar = CalDavCalendar(url, username=USER, password=PASSWORD, zone=TZ, timeout_s=5.0)
    prepare = tool_preparer(JOB, store, calendar, clock=lambda: NOW)
    assert prepare is not None
    worker = CalendarWorker(store, calendar, timeout_s=5.0)

    # the walk-in (10-11 am, plus the 10-minute buffer) is not offered, and cannot be booked
    t = JOB.new_task(CALLER)
    ask = json.dumps({"service": "haircut", "date": "2026-12-08"})
    await prepare(t, "check_availability", ask)
    free = JOB.run_tool(t, "check_availability", ask, NOW).output["days"][0]["free_start_times"]
    assert free == ["9 am to 9:15 am", "11:15 am to noon", "1:30 pm to 5:30 pm"]
    book = json.dumps({"service": "haircut", "date": "2026-12-08", "time": "10:30", "name": "Sam"})
    await prepare(t, "book_appointment", book)
    assert "already taken" in JOB.run_tool(t, "book_appointment", book, NOW).output["error"]

    # a phone booking at 2 pm reaches the calendar at 2 pm New York time
    book = json.dumps({"service": "haircut", "date": "2026-12-08", "time": "14:00", "name": "Sam"})
    await prepare(t, "book_appointment", book)
    assert JOB.run_tool(t, "book_appointment", book, NOW).ok
    await store.commit(lambda tx: JOB.commit(tx, "CA1", t, NOW))
    assert await worker.deliver_due() == 1
    ours = [e for e in await stored_events(url) if str(e["uid"]) != "walk-in@person.example"]
    assert len(ours) == 1
    assert ours[0]["dtstart"].dt == dt.datetime(2026, 12, 8, 14, 0, tzinfo=TZ)
    assert ours[0]["dtend"].dt == dt.datetime(2026, 12, 8, 14, 30, tzinfo=TZ)
    uid = str(ours[0]["uid"])

    # moved: the same event, later, with a higher sequence; then cancelled: gone; the walk-in stays
    t.found = loaded(dt.date(2026, 12, 8), booked=tuple(t.found.booked), mine=tuple(t.mine.values()))
    assert run(t, "move_appointment", date="2026-12-08", time="16:00").ok
    await store.commit(lambda tx: JOB.commit(tx, "CA2", t, NOW))
    assert await worker.deliver_due() == 1
    (moved,) = [e for e in await stored_events(url) if str(e["uid"]) == uid]
    assert moved["dtstart"].dt == dt.datetime(2026, 12, 8, 16, 0, tzinfo=TZ) and int(moved["sequence"]) == 1
    assert run(t, "cancel_appointment").ok
    await store.commit(lambda tx: JOB.commit(tx, "CA2", t, NOW))
    assert await worker.deliver_due() == 1
    assert [str(e["uid"]) for e in await stored_events(url)] == ["walk-in@person.example"]


async def test_the_daemon_checks_its_caldav_calendar_before_an_appointments_tool(radicale: Radicale,
                                                                                 store: Store) -> None:
    """With VOICEBRIDGE_CALDAV_URL the daemon's lookups ask that calendar, in the business's time zone."""
    from voicebridge.config import Config
    from voicebridge.daemon import Daemon

    url = radicale.new_calendar()
    await put_by_hand(url, "walk-in.ics", HAND_BOOKED)
    config = Config(caldav_url=url, caldav_username=USER, caldav_password=PASSWORD, job="appointments")
    daemon = Daemon(config, job=JOB, store=store, wall_clock=lambda: NOW)
    assert daemon.calendar is not None and daemon.calendar.zone == TZ
    prepare = daemon.setup.prepare_tool
    assert prepare is not None
    t = JOB.new_task(CALLER)
    book = json.dumps({"service": "haircut", "date": "2026-12-08", "time": "10:00", "name": "Sam"})
    await prepare(t, "book_appointment", book)
    assert "already taken" in JOB.run_tool(t, "book_appointment", book, daemon.setup.wall_clock()).output["error"]
