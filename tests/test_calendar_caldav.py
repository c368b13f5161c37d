"""The business's CalDAV calendar, against a real CalDAV server (Radicale) on 127.0.0.1.

What is written is checked with an independent client (plain PROPFIND/GET and icalendar, see
caldav_server.py). Outbox deliveries are driven with `deliver_due()` and an injected clock, so
retries and backoff need no sleeping; only the server's start is waited for (bounded).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping
from zoneinfo import ZoneInfo

import httpx
import pytest
import trio

from caldav_server import PASSWORD, USER, Radicale, put_by_hand, stored_events, stored_objects
from voicebridge.config import Config
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.edges.calendar import CalDavCalendar, CalendarError, resource_name
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.ops.outbox import CalendarWorker
from voicebridge.ops.store import Store

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 3, 20, 9, 0, tzinfo=timezone.utc)  # "now" for the outbox


def booking(uid: str = "booking-1@shop.example", start: str = "2026-03-30T14:00:00+02:00",
            end: str = "2026-03-30T14:30:00+02:00", sequence: int = 0) -> dict[str, Any]:
    """A haircut on the Monday after the EU clocks went forward (Sunday 29 March 2026)."""
    return {"uid": uid, "start": start, "end": end, "tz": "Europe/Berlin", "summary": "Haircut, 30 min",
            "description": "Booked by phone", "sequence": sequence}


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def calendar_url(radicale: Radicale) -> str:
    return radicale.new_calendar()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "vb.sqlite3")
    try:
        yield s
    finally:
        await s.aclose()


def client(url: str, **kw: Any) -> CalDavCalendar:
    return CalDavCalendar(url, username=USER, password=kw.pop("password", PASSWORD), zone=BERLIN,
                          timeout_s=kw.pop("timeout_s", 5.0), **kw)


class Clock:
    """The outbox's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


def worker(store: Store, calendar: Any, clock: Clock, **kw: Any) -> CalendarWorker:
    return CalendarWorker(store, calendar, now=clock, rand=lambda: 0.5, **{"timeout_s": 5.0, **kw})


async def enqueue(store: Store, event: str, payload: Mapping[str, Any], subject: str = "booking:1") -> None:
    await store.commit(lambda tx: tx.enqueue(event, subject, dict(payload), target="calendar"), now=T0)


async def outbox(store: Store) -> list[dict[str, Any]]:
    """The calendar rows, oldest first, as the table holds them."""
    return await store.read(lambda tx: tx.execute(
        "SELECT event, state, attempts, last_error FROM outbox WHERE target = 'calendar' ORDER BY id"))


class LostAnswer:
    """A calendar whose first write reaches the server but whose answer is lost (a timeout, a reset)."""

    def __init__(self, real: CalDavCalendar) -> None:
        self.real = real
        self.lost = 0

    async def put_event(self, payload: Mapping[str, Any]) -> None:
        await self.real.put_event(payload)
        if self.lost == 0:
            self.lost += 1
            raise CalendarError("writing event: connection reset after the request was sent")

    async def delete_event(self, uid: str) -> None:
        await self.real.delete_event(uid)


# -- writing events --------------------------------------------------------------------------


async def test_events_keep_the_business_wall_clock_time_on_both_sides_of_the_dst_change(calendar_url: str) -> None:
    """Berlin 14:00 on the Friday before the change is 13:00 UTC; on the Monday after, 12:00 UTC."""
    cal = client(calendar_url)
    await cal.put_event(booking("before@shop.example", "2026-03-27T14:00:00+01:00", "2026-03-27T14:30:00+01:00"))
    await cal.put_event(booking("after@shop.example", "2026-03-30T12:00:00+00:00", "2026-03-30T12:30:00+00:00"))

    events = {str(ev["uid"]): ev for ev in await stored_events(calendar_url)}
    assert sorted(events) == ["after@shop.example", "before@shop.example"]
    for uid, utc_hour in (("before@shop.example", 13), ("after@shop.example", 12)):
        ev = events[uid]
        start = ev["dtstart"]
        assert start.params["TZID"] == "Europe/Berlin"  # written in the business's zone ...
        assert (start.dt.hour, start.dt.minute) == (14, 0)  # ... at its wall-clock time
        assert start.dt.astimezone(timezone.utc).hour == utc_hour
        assert ev["dtend"].dt - start.dt == timedelta(minutes=30)
        assert str(ev["summary"]) == "Haircut, 30 min" and int(ev["sequence"]) == 0

    # The object carries its own VTIMEZONE, and that rule alone (no zoneinfo) gives the same offsets.
    for obj in (await stored_objects(calendar_url)).values():
        (vtz,) = obj.walk("VTIMEZONE")
        assert str(vtz["tzid"]) == "Europe/Berlin"
        own = vtz.to_tz()
        (ev,) = obj.walk("VEVENT")
        wall = ev["dtstart"].dt.replace(tzinfo=None)
        expected = timedelta(hours=2) if wall.day == 30 else timedelta(hours=1)
        assert own.utcoffset(wall) == expected

    assert await cal.busy(datetime(2026, 3, 26, tzinfo=timezone.utc), datetime(2026, 4, 1, tzinfo=timezone.utc)) == [
        (datetime(2026, 3, 27, 13, 0, tzinfo=timezone.utc), datetime(2026, 3, 27, 13, 30, tzinfo=timezone.utc)),
        (datetime(2026, 3, 30, 12, 0, tzinfo=timezone.utc), datetime(2026, 3, 30, 12, 30, tzinfo=timezone.utc)),
    ]


async def test_a_retry_after_a_lost_answer_leaves_one_event(calendar_url: str, store: Store) -> None:
    """The server stored the event but the answer was lost: the retried row replaces it, no duplicate."""
    clock = Clock()
    w = worker(store, LostAnswer(client(calendar_url)), clock)
    await enqueue(store, "calendar.put", booking())

    assert await w.deliver_due() == 1
    (row,) = await outbox(store)
    assert row["state"] == "pending" and row["attempts"] == 1
    assert "connection reset" in row["last_error"]
    assert len(await stored_events(calendar_url)) == 1  # it did land

    assert await w.deliver_due() == 0  # not due before its backoff
    clock.advance(5)
    assert await w.deliver_due() == 1
    (row,) = await outbox(store)
    assert row["state"] == "delivered" and row["attempts"] == 2
    (href,) = await stored_objects(calendar_url)
    assert href.endswith("/" + resource_name("booking-1@shop.example"))  # both attempts PUT the same resource
    (ev,) = await stored_events(calendar_url)
    assert str(ev["uid"]) == "booking-1@shop.example"

    # The same booking written again (a second delivery of the same row) is still one event.
    await enqueue(store, "calendar.put", booking())
    assert await w.deliver_due() == 1
    assert [str(e["uid"]) for e in await stored_events(calendar_url)] == ["booking-1@shop.example"]


async def test_a_moved_booking_replaces_its_event_with_a_higher_sequence(calendar_url: str, store: Store) -> None:
    clock = Clock()
    w = worker(store, client(calendar_url), clock)
    await enqueue(store, "calendar.put", booking())
    await enqueue(store, "calendar.put", booking(start="2026-04-03T10:00:00+02:00", end="2026-04-03T10:45:00+02:00",
                                                 sequence=1))
    assert await w.deliver_due() == 2
    (ev,) = await stored_events(calendar_url)
    assert ev["dtstart"].dt == datetime(2026, 4, 3, 10, 0, tzinfo=BERLIN)
    assert ev["dtend"].dt == datetime(2026, 4, 3, 10, 45, tzinfo=BERLIN)
    assert int(ev["sequence"]) == 1


async def test_a_cancelled_booking_is_removed_and_a_second_cancel_is_fine(calendar_url: str, store: Store) -> None:
    clock = Clock()
    w = worker(store, client(calendar_url), clock)
    await enqueue(store, "calendar.put", booking())
    assert await w.deliver_due() == 1
    assert len(await stored_events(calendar_url)) == 1

    await enqueue(store, "calendar.delete", {"uid": "booking-1@shop.example"})
    await enqueue(store, "calendar.delete", {"uid": "booking-1@shop.example"})  # already gone: 404 is done
    assert await w.deliver_due() == 2
    assert await stored_events(calendar_url) == []
    assert [r["state"] for r in await outbox(store)] == ["delivered"] * 3


async def test_a_bookings_writes_land_in_the_order_they_were_made(calendar_url: str, store: Store) -> None:
    """A failed write holds back the later ones about the same booking: the late retry cannot undo the cancel."""

    class DownOnce:
        def __init__(self, real: CalDavCalendar) -> None:
            self.real, self.failed, self.calls = real, False, []  # type: list[str]

        async def put_event(self, payload: Mapping[str, Any]) -> None:
            self.calls.append(f"put {payload['uid']}")
            if not self.failed:
                self.failed = True
                raise CalendarError("writing event: HTTP 503")
            await self.real.put_event(payload)

        async def delete_event(self, uid: str) -> None:
            self.calls.append(f"delete {uid}")
            await self.real.delete_event(uid)

    clock = Clock()
    down = DownOnce(client(calendar_url))
    w = worker(store, down, clock)
    await enqueue(store, "calendar.put", booking())
    await enqueue(store, "calendar.delete", {"uid": "booking-1@shop.example"})
    await enqueue(store, "calendar.put", booking("other@shop.example"), subject="booking:2")

    assert await w.deliver_due() == 2  # the first put fails; the other booking is not held back
    assert [(r["event"], r["state"], r["attempts"]) for r in await outbox(store)] == [
        ("calendar.put", "pending", 1), ("calendar.delete", "pending", 0), ("calendar.put", "delivered", 1)]
    clock.advance(5)
    assert await w.deliver_due() == 2
    assert down.calls == ["put booking-1@shop.example", "put other@shop.example", "put booking-1@shop.example",
                          "delete booking-1@shop.example"]
    assert [str(e["uid"]) for e in await stored_events(calendar_url)] == ["other@shop.example"]


async def test_an_event_stored_under_another_name_is_replaced_and_removed_where_it_is(calendar_url: str) -> None:
    """The booking's UID already lives under a name of the server's or another client's choosing."""
    body = "DTSTART;TZID=Europe/Berlin:20260330T140000\nDTEND;TZID=Europe/Berlin:20260330T143000\nSUMMARY:Copy"
    await put_by_hand(calendar_url, "elsewhere.ics", BY_HAND.format(uid="booking-1@shop.example", body=body))
    cal = client(calendar_url)
    await cal.put_event(booking(start="2026-03-30T15:00:00+02:00", end="2026-03-30T15:30:00+02:00", sequence=1))
    objects = await stored_objects(calendar_url)
    assert [href.rsplit("/", 1)[1] for href in objects] == ["elsewhere.ics"]
    (ev,) = await stored_events(calendar_url)
    assert ev["dtstart"].dt == datetime(2026, 3, 30, 15, 0, tzinfo=BERLIN) and str(ev["summary"]) == "Haircut, 30 min"
    await cal.delete_event("booking-1@shop.example")
    assert await stored_objects(calendar_url) == {}


async def test_a_payload_that_can_never_be_written_is_dead_at_once(calendar_url: str, store: Store) -> None:
    clock = Clock()
    w = worker(store, client(calendar_url), clock)
    await enqueue(store, "calendar.put", {**booking(), "start": "2026-03-30T14:00:00"})  # no offset
    await enqueue(store, "calendar.invite", booking(), subject="booking:2")
    assert await w.deliver_due() == 2
    dead = await outbox(store)
    assert [r["state"] for r in dead] == ["dead", "dead"]
    assert "no UTC offset" in dead[0]["last_error"]
    assert "unknown calendar event 'calendar.invite'" in dead[1]["last_error"]
    assert await stored_events(calendar_url) == []


# -- reading busy times ------------------------------------------------------------------------

BY_HAND = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//a person//their calendar app//EN
BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20260301T100000Z
{body}
END:VEVENT
END:VCALENDAR
"""


async def test_events_entered_by_hand_block_their_times(calendar_url: str) -> None:
    """A one-off, a weekly (expanded), an all-day (its whole Berlin day); free and cancelled ones do not block."""
    hand = {
        "dentist": "DTSTART;TZID=Europe/Berlin:20260330T090000\nDTEND;TZID=Europe/Berlin:20260330T100000\nSUMMARY:Dentist",
        "team": "DTSTART;TZID=Europe/Berlin:20260316T170000\nDURATION:PT1H\nRRULE:FREQ=WEEKLY\nSUMMARY:Team meeting",
        "closed": "DTSTART;VALUE=DATE:20260331\nDTEND;VALUE=DATE:20260401\nSUMMARY:Closed",
        "free": "DTSTART;TZID=Europe/Berlin:20260330T110000\nDTEND;TZID=Europe/Berlin:20260330T120000\nTRANSP:TRANSPARENT",
        "off": "DTSTART;TZID=Europe/Berlin:20260330T130000\nDTEND;TZID=Europe/Berlin:20260330T140000\nSTATUS:CANCELLED",
    }
    for name, body in hand.items():
        await put_by_hand(calendar_url, f"{name}.ics", BY_HAND.format(uid=f"{name}@person.example", body=body))

    cal = client(calendar_url)
    await cal.put_event(booking())  # one of ours, 14:00-14:30

    busy = await cal.busy(datetime(2026, 3, 30, tzinfo=BERLIN), datetime(2026, 4, 1, tzinfo=BERLIN))
    utc = partial(datetime, tzinfo=timezone.utc)
    assert busy == [
        (utc(2026, 3, 30, 7, 0), utc(2026, 3, 30, 8, 0)),  # dentist 09:00-10:00 CEST
        (utc(2026, 3, 30, 12, 0), utc(2026, 3, 30, 12, 30)),  # our booking
        (utc(2026, 3, 30, 15, 0), utc(2026, 3, 30, 16, 0)),  # this Monday's team meeting, 17:00 CEST
        (utc(2026, 3, 30, 22, 0), utc(2026, 3, 31, 22, 0)),  # closed all Tuesday, Berlin time
    ]
    # The weekly meeting before the change is at 17:00 CET = 16:00 UTC.
    assert await cal.busy(datetime(2026, 3, 23, tzinfo=BERLIN), datetime(2026, 3, 24, tzinfo=BERLIN)) == [
        (utc(2026, 3, 23, 16, 0), utc(2026, 3, 23, 17, 0))]
    assert await cal.busy(datetime(2026, 3, 30, 10, tzinfo=BERLIN), datetime(2026, 3, 30, 10, tzinfo=BERLIN)) == []


# -- failures ------------------------------------------------------------------------------------


async def test_a_calendar_that_is_down_keeps_the_rows_pending_until_it_is_back(tmp_path: Path, store: Store) -> None:
    server = Radicale(tmp_path / "radicale")
    server.start()
    try:
        url = server.new_calendar()
        server.stop()
        clock = Clock()
        cal = client(url, timeout_s=3.0)
        w = worker(store, cal, clock)
        await enqueue(store, "calendar.put", booking())

        assert await w.deliver_due() == 1
        (row,) = await outbox(store)
        assert row["state"] == "pending" and row["attempts"] == 1
        assert row["last_error"] == ("writing event booking-1@shop.example: ConnectionError: cannot reach the calendar"
                                     " server (Connection refused)")
        with pytest.raises(CalendarError, match="reading the calendar"):
            await cal.busy(datetime(2026, 3, 30, tzinfo=BERLIN), datetime(2026, 3, 31, tzinfo=BERLIN))

        server.start()  # back, same port and storage
        clock.advance(5)
        assert await w.deliver_due() == 1
        (row,) = await outbox(store)
        assert row["state"] == "delivered" and row["attempts"] == 2
        (ev,) = await stored_events(url)
        assert str(ev["uid"]) == "booking-1@shop.example"
    finally:
        server.stop()


async def test_a_wrong_password_is_a_clear_error_and_never_shown(calendar_url: str, store: Store) -> None:
    clock = Clock()
    wrong = "not-the-password-4711"
    w = worker(store, client(calendar_url, password=wrong), clock)
    await enqueue(store, "calendar.put", booking())
    assert await w.deliver_due() == 1
    (row,) = await outbox(store)
    assert row["state"] == "pending" and "Unauthorized" in row["last_error"] and wrong not in row["last_error"]
    assert PASSWORD not in repr(client(calendar_url))


# -- the daemon -------------------------------------------------------------------------------------


async def test_the_daemon_runs_the_calendar_worker_only_with_a_calendar_url(
        tmp_path: Path, store: Store, calendar_url: str) -> None:
    """With VOICEBRIDGE_CALDAV_URL the daemon's nursery delivers calendar rows; without it, none is built."""
    from voicebridge.peers.demo import free_port

    job = PizzaJob(load_menu(None), 800)
    assert Daemon(Config(db_path=tmp_path / "vb.sqlite3"), job=job, store=store).calendar_outbox is None

    port = free_port()
    token = "daemon-feed-token-0123456789"
    config = Config(host="127.0.0.1", port=port, db_path=tmp_path / "vb.sqlite3", caldav_url=calendar_url,
                    caldav_username=USER, caldav_password=PASSWORD, calendar_feed_token=token)

    async def feed_events() -> list[dict[str, Any]]:
        return [booking()]

    daemon = Daemon(config, job=job, store=store, calendar_zone=BERLIN, feed_events=feed_events)
    assert daemon.calendar is not None and daemon.calendar.zone is BERLIN
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
            await enqueue(store, "calendar.put", booking())
            assert daemon.calendar_outbox is not None
            daemon.calendar_outbox.wake()
            for _ in range(3000):  # bounded by the fail_after above
                if [r["state"] for r in await outbox(store)] == ["delivered"]:
                    break
                await trio.sleep(0.01)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:  # the feed is served too
                feed = await http.get(f"/calendar/{token}.ics")
                assert feed.status_code == 200 and b"UID:booking-1@shop.example" in feed.content
                assert (await http.get("/calendar/daemon-feed-token-0123456788.ics")).status_code == 404
            stop.set()
    (ev,) = await stored_events(calendar_url)
    assert str(ev["uid"]) == "booking-1@shop.example"
    async with httpx.AsyncClient() as http:  # the daemon is gone: nothing listens any more
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_calendar_that_never_answers_is_given_up_on_within_the_bound(store: Store) -> None:
    """A server that accepts the connection and then says nothing: the attempt ends, the row waits."""
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        held: list[trio.SocketStream] = []

        async def hold(stream: trio.SocketStream) -> None:
            held.append(stream)
            await trio.sleep_forever()

        nursery.start_soon(partial(trio.serve_listeners, hold, listeners))
        clock = Clock()
        w = worker(store, client(f"http://127.0.0.1:{port}/shop/cal/", timeout_s=0.5), clock, timeout_s=0.5)
        await enqueue(store, "calendar.put", booking())
        with trio.fail_after(5):
            assert await w.deliver_due() == 1
        (row,) = await outbox(store)
        assert row["state"] == "pending" and row["attempts"] == 1
        assert "did not answer" in row["last_error"] or "no answer within" in row["last_error"], row["last_error"]
        assert held  # it did connect
        nursery.cancel_scope.cancel()
