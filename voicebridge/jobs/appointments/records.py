"""The stored bookings, as the commit, the lookups and `voicebridge bookings` read them.

Pure queries over the store's `Transaction` (run with `await store.read(fn)`, or inside a
commit): no I/O here. Times are stored as ISO-8601 UTC text, which sorts as time does.
Every booking belongs to one business (its slug; "default" for the one zero-configuration
business): the call's lookups and the commit read only their business's bookings.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import attrs

from voicebridge.engine.job import Transaction
from voicebridge.jobs.appointments.booking import StoredBooking

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
UTC = dt.timezone.utc
DEFAULT_BUSINESS = "default"


def stored_time(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime(_TS_FORMAT)


def parse_stored(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TS_FORMAT).replace(tzinfo=UTC)


def _stored(r: dict[str, Any]) -> StoredBooking:
    return StoredBooking(id=r["id"], uid=r["uid"], service=r["service"], service_name=r["service_name"],
                         start=parse_stored(r["starts_at"]), end=parse_stored(r["ends_at"]), customer=r["customer"],
                         phone=r["phone"], sequence=r["sequence"])


def booked_between(tx: Transaction, start: dt.datetime, end: dt.datetime, *,
                   business: str = DEFAULT_BUSINESS) -> list[StoredBooking]:
    """`business`'s confirmed bookings overlapping [start, end), in time order."""
    rows = tx.execute("SELECT * FROM bookings WHERE business = ? AND status = 'confirmed' AND starts_at < ?"
                      " AND ends_at > ? ORDER BY starts_at", (business, stored_time(end), stored_time(start)))
    return [_stored(r) for r in rows]


def get_stored(tx: Transaction, booking_id: int, *, business: str = DEFAULT_BUSINESS) -> StoredBooking | None:
    """`business`'s confirmed booking by number (None if there is none, it was cancelled, or it is
    another business's)."""
    rows = tx.execute("SELECT * FROM bookings WHERE id = ? AND business = ? AND status = 'confirmed'",
                      (booking_id, business))
    return _stored(rows[0]) if rows else None


def upcoming_for_phone(tx: Transaction, phone: str, now: dt.datetime, limit: int = 10, *,
                       business: str = DEFAULT_BUSINESS) -> list[StoredBooking]:
    rows = tx.execute("SELECT * FROM bookings WHERE business = ? AND status = 'confirmed' AND phone = ?"
                      " AND starts_at > ? ORDER BY starts_at LIMIT ?", (business, phone, stored_time(now), limit))
    return [_stored(r) for r in rows]


def upcoming_by_name(tx: Transaction, name: str, now: dt.datetime, limit: int = 10, *,
                     business: str = DEFAULT_BUSINESS) -> list[StoredBooking]:
    rows = tx.execute("SELECT * FROM bookings WHERE business = ? AND status = 'confirmed'"
                      " AND lower(customer) = lower(?) AND starts_at > ? ORDER BY starts_at LIMIT ?",
                      (business, name.strip(), stored_time(now), limit))
    return [_stored(r) for r in rows]


# -- `voicebridge bookings` ------------------------------------------------------------------


@attrs.frozen
class BookingRow:
    """One line of `voicebridge bookings`."""

    id: int
    business: str
    status: str
    service_name: str
    start: dt.datetime
    end: dt.datetime
    time_zone: str
    customer: str
    phone: str | None
    created_at: dt.datetime
    delivery_state: str | None  # the latest webhook event's outbox state
    calendar_state: str | None  # the latest calendar write's outbox state (None: no calendar row)


@attrs.frozen
class Change:
    at: dt.datetime
    change: str
    start: dt.datetime
    end: dt.datetime
    call_sid: str | None


@attrs.frozen
class Event:
    """An outbox row about a booking (a webhook event or a calendar write)."""

    event: str
    target: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: dt.datetime | None


@attrs.frozen
class BookingDetail:
    row: BookingRow
    uid: str
    sequence: int
    price_cents: int | None
    call_sid: str | None
    changes: tuple[Change, ...]
    events: tuple[Event, ...]


def _latest_state(tx: Transaction, booking_id: int, target: str) -> str | None:
    rows = tx.execute("SELECT state FROM outbox WHERE subject = ? AND target = ? ORDER BY id DESC LIMIT 1",
                      (f"booking:{booking_id}", target))
    return rows[0]["state"] if rows else None


def _row(tx: Transaction, r: dict[str, Any]) -> BookingRow:
    return BookingRow(id=r["id"], business=r["business"], status=r["status"], service_name=r["service_name"], start=parse_stored(r["starts_at"]),
                      end=parse_stored(r["ends_at"]), time_zone=r["time_zone"], customer=r["customer"],
                      phone=r["phone"], created_at=parse_stored(r["created_at"]),
                      delivery_state=_latest_state(tx, r["id"], "webhook"),
                      calendar_state=_latest_state(tx, r["id"], "calendar"))


def list_bookings(tx: Transaction, *, limit: int = 20, upcoming_after: dt.datetime | None = None,
                  business: str | None = None) -> list[BookingRow]:
    """The most recent bookings (newest first), or with `upcoming_after` the next ones (soonest
    first); only `business`'s, if given."""
    only, whose = (" AND business = ?", (business,)) if business is not None else ("", ())
    if upcoming_after is not None:
        rows = tx.execute(f"SELECT * FROM bookings WHERE status = 'confirmed' AND starts_at > ?{only}"
                          " ORDER BY starts_at LIMIT ?", (stored_time(upcoming_after), *whose, limit))
    else:
        rows = tx.execute(f"SELECT * FROM bookings WHERE 1 = 1{only} ORDER BY id DESC LIMIT ?", (*whose, limit))
    return [_row(tx, r) for r in rows]


def get_booking(tx: Transaction, booking_id: int) -> BookingDetail | None:
    rows = tx.execute("SELECT * FROM bookings WHERE id = ?", (booking_id,))
    if not rows:
        return None
    r = rows[0]
    changes = tuple(Change(parse_stored(c["at"]), c["change"], parse_stored(c["starts_at"]),
                           parse_stored(c["ends_at"]), c["call_sid"])
                    for c in tx.execute("SELECT * FROM booking_changes WHERE booking_id = ? ORDER BY id", (booking_id,)))
    events = tuple(Event(e["event"], e["target"], e["state"], e["attempts"], e["last_error"],
                         parse_stored(e["delivered_at"]) if e["delivered_at"] else None)
                   for e in tx.execute("SELECT * FROM outbox WHERE subject = ? ORDER BY id", (f"booking:{booking_id}",)))
    return BookingDetail(row=_row(tx, r), uid=r["uid"], sequence=r["sequence"], price_cents=r["price_cents"],
                         call_sid=r["call_sid"], changes=changes, events=events)


def feed_events(tx: Transaction, since: dt.datetime, *, limit: int = 2000,
                business: str = DEFAULT_BUSINESS) -> list[dict[str, Any]]:
    """`business`'s confirmed bookings ending after `since`, soonest first, each as its latest `calendar.put` payload
    (the iCalendar feed shows exactly what a CalDAV calendar is sent)."""
    rows = tx.execute(
        "SELECT b.id, (SELECT o.payload FROM outbox o WHERE o.subject = 'booking:' || b.id AND o.event = 'calendar.put'"
        " ORDER BY o.id DESC LIMIT 1) AS payload FROM bookings b WHERE b.business = ? AND b.status = 'confirmed'"
        " AND b.ends_at > ? ORDER BY b.starts_at LIMIT ?", (business, stored_time(since), limit))
    return [json.loads(r["payload"]) for r in rows if r["payload"]]
