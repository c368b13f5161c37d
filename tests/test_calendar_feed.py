"""The bookings as a subscribable iCalendar feed (GET /calendar/<token>.ics), and the event text itself."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Mapping, Sequence
from zoneinfo import ZoneInfo

import icalendar
import pytest

from voicebridge.config import Config, ConfigError
from voicebridge.edges.ical import CalendarFeed, event_calendar, feed_calendar, parse_event
from voicebridge.edges.web import create_app

TOKEN = "feed-token-0123456789abcdefXYZ"
STAMP = datetime(2026, 3, 20, 9, 0, tzinfo=timezone.utc)
BERLIN = ZoneInfo("Europe/Berlin")


def booking(uid: str, start: str, end: str, tz: str = "Europe/Berlin", sequence: int = 0) -> dict[str, Any]:
    return {"uid": uid, "start": start, "end": end, "tz": tz, "summary": f"Haircut ({uid})",
            "description": "Booked by phone", "sequence": sequence}


class Bookings:
    """A stand-in for the bookings table: the feed's source, changed by the test."""

    def __init__(self) -> None:
        self.on: dict[str, dict[str, Any]] = {}
        self.broken = False

    async def events(self) -> Sequence[Mapping[str, Any]]:
        if self.broken:
            raise RuntimeError("database is locked")
        return list(self.on.values())


def app_with(bookings: Bookings | None) -> Any:
    feed = None if bookings is None else CalendarFeed(TOKEN, bookings.events, name="The Salon")
    return create_app(SimpleNamespace(config=Config()), feed=feed)  # type: ignore[arg-type]


async def fetch(app: Any, path: str) -> tuple[int, str, bytes]:
    response = await app.test_client().get(path)
    return response.status_code, response.headers.get("Content-Type", ""), await response.get_data()


def events_by_uid(body: bytes) -> dict[str, icalendar.Event]:
    return {str(ev["uid"]): ev for ev in icalendar.Calendar.from_ical(body).walk("VEVENT")}


async def test_the_feed_shows_the_bookings_at_their_local_time_across_dst() -> None:
    bookings = Bookings()
    bookings.on["a"] = booking("a@salon.example", "2026-03-27T14:00:00+01:00", "2026-03-27T14:30:00+01:00")
    bookings.on["b"] = booking("b@salon.example", "2026-03-30T12:00:00Z", "2026-03-30T12:45:00Z")
    bookings.on["c"] = booking("c@salon.example", "2026-03-30T09:00:00-04:00", "2026-03-30T10:00:00-04:00",
                               tz="America/New_York")
    status, content_type, body = await fetch(app_with(bookings), f"/calendar/{TOKEN}.ics")
    assert status == 200 and content_type.startswith("text/calendar")
    cal = icalendar.Calendar.from_ical(body)
    assert str(cal["x-wr-calname"]) == "The Salon"
    assert cal["refresh-interval"].dt == timedelta(minutes=15)  # subscribers see new bookings soon
    assert str(cal["x-published-ttl"]) == "PT15M"
    assert sorted(str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")) == ["America/New_York", "Europe/Berlin"]
    ev = events_by_uid(body)
    assert ev["a@salon.example"]["dtstart"].params["TZID"] == "Europe/Berlin"
    assert ev["a@salon.example"]["dtstart"].dt.astimezone(timezone.utc) == datetime(2026, 3, 27, 13, tzinfo=timezone.utc)
    assert ev["b@salon.example"]["dtstart"].dt.replace(tzinfo=None) == datetime(2026, 3, 30, 14, 0)  # 14:00 CEST
    assert ev["b@salon.example"]["dtend"].dt - ev["b@salon.example"]["dtstart"].dt == timedelta(minutes=45)
    assert ev["c@salon.example"]["dtstart"].params["TZID"] == "America/New_York"
    assert ev["c@salon.example"]["dtstart"].dt.astimezone(timezone.utc).hour == 13


async def test_cancelled_bookings_leave_the_feed_and_moved_ones_show_at_the_new_time() -> None:
    bookings = Bookings()
    bookings.on["a"] = booking("a@salon.example", "2026-03-30T14:00:00+02:00", "2026-03-30T14:30:00+02:00")
    bookings.on["b"] = booking("b@salon.example", "2026-03-30T15:00:00+02:00", "2026-03-30T15:30:00+02:00")
    app = app_with(bookings)
    assert sorted(events_by_uid((await fetch(app, f"/calendar/{TOKEN}.ics"))[2])) == ["a@salon.example",
                                                                                     "b@salon.example"]
    del bookings.on["a"]  # cancelled
    bookings.on["b"] = booking("b@salon.example", "2026-04-02T10:00:00+02:00", "2026-04-02T10:30:00+02:00",
                               sequence=1)  # moved
    ev = events_by_uid((await fetch(app, f"/calendar/{TOKEN}.ics"))[2])
    assert list(ev) == ["b@salon.example"]
    assert ev["b@salon.example"]["dtstart"].dt == datetime(2026, 4, 2, 10, 0, tzinfo=BERLIN)
    assert int(ev["b@salon.example"]["sequence"]) == 1


async def test_a_wrong_or_missing_token_is_not_found() -> None:
    bookings = Bookings()
    bookings.on["a"] = booking("a@salon.example", "2026-03-30T14:00:00+02:00", "2026-03-30T14:30:00+02:00")
    app = app_with(bookings)
    for path in (f"/calendar/{TOKEN[:-1]}.ics", f"/calendar/{TOKEN}x.ics", "/calendar/.ics", f"/calendar/{TOKEN}"):
        status, _, body = await fetch(app, path)
        assert status == 404 and b"a@salon.example" not in body, path
    assert (await fetch(app_with(None), f"/calendar/{TOKEN}.ics"))[0] == 404  # no feed configured


async def test_a_feed_whose_bookings_cannot_be_read_answers_503_and_a_bad_row_is_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    bookings = Bookings()
    bookings.broken = True
    assert (await fetch(app_with(bookings), f"/calendar/{TOKEN}.ics"))[0] == 503
    bookings.broken = False
    bookings.on["a"] = booking("a@salon.example", "2026-03-30T14:00:00+02:00", "2026-03-30T14:30:00+02:00")
    bookings.on["bad"] = booking("bad@salon.example", "2026-03-30T14:00:00", "2026-03-30T14:30:00")
    status, _, body = await fetch(app_with(bookings), f"/calendar/{TOKEN}.ics")
    assert status == 200 and list(events_by_uid(body)) == ["a@salon.example"]
    assert any("no UTC offset" in r.getMessage() for r in caplog.records)


# -- the event text ------------------------------------------------------------------------------


def test_an_event_carries_its_zone_its_sequence_and_a_vtimezone() -> None:
    text = event_calendar(parse_event(booking("a@salon.example", "2026-10-25T02:30:00+01:00",
                                              "2026-10-25T03:30:00+01:00", sequence=3)), stamp=STAMP)
    cal = icalendar.Calendar.from_ical(text)
    (ev,) = cal.walk("VEVENT")
    # 02:30 happens twice on the night the clocks go back; the offset says which: the second (CET).
    # A TZID time would mean the first, so that one instant is written in UTC.
    assert ev["dtstart"].dt == datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)
    assert ev["dtend"].params["TZID"] == "Europe/Berlin" and ev["dtend"].dt.hour == 3
    assert ev["dtend"].dt - ev["dtstart"].dt == timedelta(hours=1)
    assert int(ev["sequence"]) == 3 and str(ev["status"]) == "CONFIRMED"
    assert ev["dtstamp"].dt == STAMP
    (vtz,) = cal.walk("VTIMEZONE")
    assert str(vtz["tzid"]) == "Europe/Berlin"
    first = icalendar.Calendar.from_ical(event_calendar(parse_event(booking(
        "b@salon.example", "2026-10-25T02:30:00+02:00", "2026-10-25T03:30:00+01:00")), stamp=STAMP))
    (ev,) = first.walk("VEVENT")  # the first 02:30 (CEST) is what the TZID form means
    assert ev["dtstart"].params["TZID"] == "Europe/Berlin"
    assert ev["dtstart"].dt.astimezone(timezone.utc) == datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(("change", "message"), [
    ({"start": "2026-03-30T14:00:00"}, "no UTC offset"),
    ({"end": "2026-03-30T13:00:00+02:00"}, "must be after start"),
    ({"tz": "Mars/Olympus"}, "not a known IANA time zone"),
    ({"uid": "has space"}, "uid must be"),
    ({"summary": ""}, "summary must be"),
    ({"sequence": -1}, "sequence must be"),
    ({"start": "tomorrow at two"}, "not an ISO-8601"),
])
def test_a_bad_event_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_event({**booking("a@salon.example", "2026-03-30T14:00:00+02:00", "2026-03-30T14:30:00+02:00"),
                     **change})


def test_feed_calendar_reports_what_it_left_out() -> None:
    good = booking("a@salon.example", "2026-03-30T14:00:00+02:00", "2026-03-30T14:30:00+02:00")
    body, problems = feed_calendar([good, {**good, "tz": "Nowhere/Town"}], stamp=STAMP)
    assert list(events_by_uid(body)) == ["a@salon.example"]
    assert problems == ["tz is not a known IANA time zone: 'Nowhere/Town'"]


# -- settings ------------------------------------------------------------------------------------


def test_calendar_settings_are_read_checked_and_kept_secret() -> None:
    env = {"VOICEBRIDGE_CALDAV_URL": "https://dav.example.com/cal/shop/appointments/",
           "VOICEBRIDGE_CALDAV_USERNAME": "shop", "VOICEBRIDGE_CALDAV_PASSWORD": "app-password-1234",
           "VOICEBRIDGE_CALENDAR_FEED_TOKEN": TOKEN}
    config = Config.from_env(env, env_file=None)
    assert (config.caldav_url, config.caldav_username, config.caldav_password, config.calendar_feed_token) == (
        "https://dav.example.com/cal/shop/appointments/", "shop", "app-password-1234", TOKEN)
    shown = config.redacted()
    assert shown["caldav_password"] == "<set>" and shown["calendar_feed_token"] == "<set>"
    assert "app-password-1234" not in repr(shown) and TOKEN not in repr(shown)

    with pytest.raises(ConfigError) as info:
        Config.from_env({"VOICEBRIDGE_CALDAV_URL": "https://shop:hunter2-secret@dav.example.com/cal/"}, env_file=None)
    assert "VOICEBRIDGE_CALDAV_URL" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="VOICEBRIDGE_CALENDAR_FEED_TOKEN") as info:
        Config.from_env({"VOICEBRIDGE_CALENDAR_FEED_TOKEN": "short"}, env_file=None)
    assert "'short'" not in str(info.value)
    serve = {"OPENAI_API_KEY": "sk-test", "PUBLIC_URL": "https://voice.example.com", "TWILIO_AUTH_TOKEN": "t" * 32}
    with pytest.raises(ConfigError, match="VOICEBRIDGE_CALDAV_PASSWORD: not set"):
        Config.from_env({**serve, "VOICEBRIDGE_CALDAV_URL": env["VOICEBRIDGE_CALDAV_URL"],
                         "VOICEBRIDGE_CALDAV_USERNAME": "shop"}, env_file=None).check_serve()
