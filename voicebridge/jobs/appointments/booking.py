"""The task of an appointments call: what the caller asks for, and what the calendar looked like.

The tools fill it in; the daemon's lookup (`AppointmentsJob.lookup`, performed before a tool
runs) loads into it the stored bookings and the external calendar's busy times of the days the
tool is about, and the caller's own upcoming bookings. Nothing here is written anywhere: the
commit does that, after the caller's yes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs

Interval = tuple[dt.datetime, dt.datetime]  # UTC-aware [start, end)
ACTIONS = ("book", "move", "cancel")


@attrs.frozen
class StoredBooking:
    """A confirmed booking as the store has it (times UTC-aware)."""

    id: int
    uid: str
    service: str
    service_name: str
    start: dt.datetime
    end: dt.datetime
    customer: str
    phone: str | None
    sequence: int


@attrs.frozen
class Lookup:
    """What a tool needs from the store and the calendar before it runs."""

    window: Interval | None  # the days it is about (UTC bounds), or None
    phone: str | None  # the caller's number: their upcoming bookings
    name: str | None  # a name: the upcoming bookings under it (to be confirmed by the caller)


@attrs.frozen
class Found:
    """What the lookup found (the daemon fills it in; tests make it by hand)."""

    window: Interval | None = None
    booked: tuple[StoredBooking, ...] = ()  # every confirmed booking overlapping the window
    external: tuple[Interval, ...] = ()  # busy times of the external calendar in the window
    calendar_error: str | None = None  # the external calendar could not be read
    mine: tuple[StoredBooking, ...] = ()  # the caller's upcoming bookings (by caller ID)
    by_name: tuple[StoredBooking, ...] = ()  # upcoming bookings under the name asked for


@attrs.define
class BookingRequest:
    """One call's request: book, move or cancel one appointment."""

    caller_number: str | None
    action: str | None = None  # one of ACTIONS once a tool has put the request together
    service: str | None = None  # service key
    start: dt.datetime | None = None  # local (business time zone) aware start
    customer: str | None = None
    booking_id: int | None = None  # the booking moved or cancelled
    found: Found = Found()
    mine: dict[int, StoredBooking] = attrs.field(factory=dict)  # bookings the caller is known to hold
    candidates: dict[int, StoredBooking] = attrs.field(factory=dict)  # found by name, not confirmed yet
    committed: list[int] = attrs.field(factory=list)
    language: str | None = None  # the call's language, once the model has said it (set_language)

    def busy(self, exclude: int | None = None) -> list[Interval]:
        """Everything that blocks a slot in the loaded window (the booking being moved excluded)."""
        return [(b.start, b.end) for b in self.found.booked if b.id != exclude] + list(self.found.external)

    def state(self) -> dict[str, Any]:
        return {"action": self.action, "service": self.service,
                "start": self.start.isoformat() if self.start else None, "customer": self.customer,
                "booking": self.booking_id, "callers_bookings": sorted(self.mine)}
