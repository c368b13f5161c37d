"""iCalendar text for bookings: the event a CalDAV server stores, and the subscribable feed.

Pure functions (no I/O). A booking reaches them as the `calendar.put` outbox payload:

    {"uid": "booking-12@shop.example", "start": "2026-03-30T14:00:00+02:00",
     "end": "2026-03-30T14:30:00+02:00", "tz": "Europe/Berlin", "summary": "Haircut, 30 min",
     "description": "Booked by phone", "sequence": 1}

`start` and `end` are ISO-8601 with an offset; `tz` is the business's IANA time zone. The event
is written in that zone (`DTSTART;TZID=Europe/Berlin:...`) with its VTIMEZONE, so a calendar
shows it at the business's wall-clock time on both sides of a DST change. `sequence` grows each
time the booking is moved, so subscribers replace the old copy (RFC 5545 SEQUENCE).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import icalendar

PRODID = "-//voicebridge//bookings//EN"
MAX_TEXT = 2_000
FEED_REFRESH_MIN = 15
_UID = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces


@attrs.frozen
class BookingEvent:
    """One booking as a calendar event, checked."""

    uid: str
    start: datetime  # in `zone`
    end: datetime  # in `zone`
    zone: ZoneInfo
    summary: str
    description: str
    sequence: int


def parse_event(payload: Mapping[str, Any]) -> BookingEvent:
    """A `calendar.put` payload checked; ValueError naming the bad field."""
    if not isinstance(payload, Mapping):
        raise ValueError("a calendar event must be a JSON object")
    uid = payload.get("uid")
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise ValueError(f"uid must be 1-255 printable ASCII characters without spaces, got {uid!r}")
    tz = payload.get("tz")
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"tz must be an IANA time zone name, got {tz!r}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"tz is not a known IANA time zone: {tz!r}") from None
    start = _instant(payload.get("start"), "start").astimezone(zone)
    end = _instant(payload.get("end"), "end").astimezone(zone)
    if end <= start:
        raise ValueError(f"end ({payload.get('end')}) must be after start ({payload.get('start')})")
    sequence = payload.get("sequence", 0)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence < 2**31:
        raise ValueError(f"sequence must be a whole number from 0, got {sequence!r}")
    return BookingEvent(uid=uid, start=start, end=end, zone=zone, summary=_short(payload.get("summary"), "summary"),
                        description=_short(payload.get("description", ""), "description", optional=True),
                        sequence=sequence)


def _instant(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an ISO-8601 date and time with an offset, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} is not an ISO-8601 date and time: {value!r}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{name} has no UTC offset (a wall-clock time is ambiguous across DST): {value!r}")
    return parsed


def _short(value: object, name: str, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise ValueError(f"{name} must be {'a' if optional else 'a non-empty'} string, got {value!r}")
    return value[:MAX_TEXT]


def _written(local: datetime) -> datetime:
    """`local` as it goes into the text: its zone's wall-clock time, unless that names another instant.

    A TZID time that occurs twice (the hour the clocks go back) means the first one (RFC 5545
    3.3.5), so the second occurrence is written in UTC instead.
    """
    if local.replace(fold=0).astimezone(timezone.utc) != local.astimezone(timezone.utc):
        return local.astimezone(timezone.utc)
    return local


def vevent(event: BookingEvent, *, stamp: datetime) -> icalendar.Event:
    """The VEVENT of one booking; `stamp` (aware) is its DTSTAMP."""
    ev = icalendar.Event()
    ev.add("uid", event.uid)
    ev.add("dtstamp", stamp.astimezone(timezone.utc))
    ev.add("dtstart", _written(event.start))
    ev.add("dtend", _written(event.end))
    ev.add("sequence", event.sequence)
    ev.add("summary", event.summary)
    if event.description:
        ev.add("description", event.description)
    ev.add("status", "CONFIRMED")
    ev.add("transp", "OPAQUE")
    return ev


def _calendar(events: list[BookingEvent], *, stamp: datetime, name: str | None = None) -> icalendar.Calendar:
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    if name:  # the feed: its name, and how often subscribers should fetch it again (RFC 7986)
        cal.add("x-wr-calname", name)
        cal.add("name", name)
        cal.add("refresh-interval", timedelta(minutes=FEED_REFRESH_MIN), parameters={"VALUE": "DURATION"})
        cal.add("x-published-ttl", f"PT{FEED_REFRESH_MIN}M")
    for event in events:
        cal.add_component(vevent(event, stamp=stamp))
    if events:
        # VTIMEZONE rules for a year around the events keep the text small and exact.
        first = min(e.start.date() for e in events) - timedelta(days=366)
        last = max(e.end.date() for e in events) + timedelta(days=366)
        cal.add_missing_timezones(first_date=max(first, date(1970, 1, 1)), last_date=last)
    return cal


def event_calendar(event: BookingEvent, *, stamp: datetime) -> bytes:
    """The iCalendar object a CalDAV server stores for one booking: VTIMEZONE + VEVENT."""
    text: bytes = _calendar([event], stamp=stamp).to_ical()
    return text


def feed_calendar(payloads: Iterable[Mapping[str, Any]], *, stamp: datetime,
                  name: str = "Bookings") -> tuple[bytes, list[str]]:
    """The subscribable feed of `payloads` (the bookings still on: cancelled ones are left out by
    the caller), and why each payload that does not check was skipped: one bad row must not
    take the whole feed down, and the caller logs the reasons.
    """
    events, problems = [], []
    for payload in payloads:
        try:
            events.append(parse_event(payload))
        except ValueError as exc:
            problems.append(str(exc))
    events.sort(key=lambda e: (e.start, e.uid))
    text: bytes = _calendar(events, stamp=stamp, name=name).to_ical()
    return text, problems


FeedSource = Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]


@attrs.frozen
class CalendarFeed:
    """The subscribable bookings feed: its secret URL token and where its events come from.

    `events()` returns the bookings still on, each as the `calendar.put` payload
    ({"uid", "start", "end", "tz", "summary", "description", "sequence"}).
    """

    token: str = attrs.field(repr=False)
    events: FeedSource
    name: str = "Bookings"
