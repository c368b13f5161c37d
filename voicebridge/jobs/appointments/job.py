"""The appointment book as a job of the engine: its words, tools, request, commit and tables.

The commit re-checks the slot INSIDE the store's transaction (SQLite's BEGIN IMMEDIATE lets one
writer in at a time), so of two calls racing for one slot exactly one books it; the other gets a
CommitError that offers the nearest free slots. A booking belongs to the business the call is for
(`tx.business`): only that business's bookings are read, taken or changed. Each commit queues its webhook event
(`booking.created`, `booking.moved`, `booking.cancelled`) and, for the calendar, `calendar.put`
or `calendar.delete` (target "calendar", delivered only when a calendar is configured).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import attrs

from voicebridge.engine.job import CommitError, Committed, JobPrompts, ToolResult, Transaction
from voicebridge.i18n import ENGLISH, SET_LANGUAGE, Translators, set_language
from voicebridge.jobs.appointments import slots
from voicebridge.jobs.appointments.booking import BookingRequest, Found, Lookup, StoredBooking
from voicebridge.jobs.appointments.business import Business
from voicebridge.jobs.appointments.prompts import PROMPTS, session_instructions
from voicebridge.jobs.appointments.records import booked_between, get_stored, stored_time
from voicebridge.jobs.appointments.tools import execute_tool, lookup_for, tool_definitions
from voicebridge.jobs.appointments.words import say_when
from voicebridge.jobs.pizza.menu import join_words

SCHEMA: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE bookings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL UNIQUE,
            call_sid TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
            service TEXT NOT NULL,
            service_name TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            ends_at TEXT NOT NULL,
            time_zone TEXT NOT NULL,
            customer TEXT NOT NULL,
            phone TEXT,
            price_cents INTEGER,
            sequence INTEGER NOT NULL DEFAULT 0,
            CHECK (ends_at > starts_at)
        )""",
        "CREATE INDEX bookings_by_time ON bookings (status, starts_at)",
        "CREATE INDEX bookings_by_phone ON bookings (phone, status)",
        """CREATE TABLE booking_changes (
            id INTEGER PRIMARY KEY,
            booking_id INTEGER NOT NULL REFERENCES bookings (id),
            call_sid TEXT,
            at TEXT NOT NULL,
            change TEXT NOT NULL CHECK (change IN ('created', 'moved', 'cancelled')),
            starts_at TEXT NOT NULL,
            ends_at TEXT NOT NULL
        )""",
    ),
    # 2: many businesses in one database: each booking belongs to the business whose number was
    # called, and only that business's bookings take its slots (two salons' books are independent).
    (
        "ALTER TABLE bookings ADD COLUMN business TEXT NOT NULL DEFAULT 'default'",
        "CREATE INDEX bookings_by_business ON bookings (business, status, starts_at)",
    ),
)


@attrs.frozen
class AppointmentsJob:
    """Book, move and cancel appointments: read back in words, commit on a yes, never double-book."""

    business: Business
    name: str = "appointments"
    prompts: JobPrompts = PROMPTS
    schema: tuple[tuple[str, ...], ...] = SCHEMA
    # The business's languages with their catalogs, loaded by the composition point (business.py).
    translators: Translators = attrs.field(default=ENGLISH, eq=False)

    @property
    def languages(self) -> tuple[str, ...]:
        return self.translators.languages

    @property
    def business_name(self) -> str:
        return self.business.name

    def instructions(self, now: dt.datetime) -> str:
        text = session_instructions(self.business, now)
        language = self.translators.instructions()
        return f"{text}\n\n{language}" if language else text

    def tool_definitions(self) -> list[dict[str, Any]]:
        tools = tool_definitions(self.business)
        return [*tools, self.translators.language_tool()] if self.translators.several else tools

    def new_task(self, caller_number: str | None) -> BookingRequest:
        return BookingRequest(caller_number=caller_number)

    def lookup(self, task: BookingRequest, name: str, arguments: str, now: dt.datetime) -> Lookup | None:
        """What tool `name` needs loaded (days, the caller's bookings) before it runs; None for nothing."""
        return lookup_for(self.business, task, name, arguments, now)

    def provide(self, task: BookingRequest, found: Found) -> None:
        """Hand the task what the lookup found. A lookup about no day (the caller's bookings only)
        keeps the days loaded before, so a request already read back keeps its busy times."""
        if found.window is None and task.found.window is not None:
            old = task.found
            found = attrs.evolve(found, window=old.window, booked=old.booked, external=old.external,
                                 calendar_error=old.calendar_error)
        task.found = found

    def run_tool(self, task: BookingRequest, name: str, arguments: str, now: dt.datetime) -> ToolResult:
        if name == SET_LANGUAGE and self.translators.several:
            return set_language(self.translators, task, arguments)
        return execute_tool(task, self.business, name, arguments, now, self.translators.get(task.language))

    def state_for_model(self, task: BookingRequest) -> dict[str, Any]:
        return task.state()

    # -- the commit

    def commit(self, tx: Transaction, call_sid: str | None, task: BookingRequest, now: dt.datetime) -> Committed:
        if task.action is None or task.start is None or task.service is None:
            raise CommitError("there is nothing to book, move or cancel yet")
        if task.action == "cancel":
            return self._cancel(tx, call_sid, task, now)
        try:
            service = self.business.service(task.service)
        except KeyError:
            raise CommitError(f"we no longer offer {task.service}") from None
        start = task.start
        end = start.astimezone(slots.UTC) + dt.timedelta(minutes=service.minutes)
        exclude = task.booking_id if task.action == "move" else None
        current = self._current(tx, exclude) if exclude is not None else None
        # the day and the days after it: for the overlap, and for the nearest free slots if it is taken
        window = slots.day_window(self.business, start.date() - dt.timedelta(days=1),
                                  start.date() + dt.timedelta(days=slots.SEARCH_DAYS))
        busy = [(b.start, b.end) for b in booked_between(tx, *window, business=tx.business)
                if b.id != exclude] + list(task.found.external)
        why = slots.refusal(self.business, service, start, busy, now)
        if why is not None:
            today = slots.local_today(self.business, now)
            nearest = slots.nearest_free(self.business, service, start, busy, now)
            offer = (" The nearest free times are " + join_words([say_when(s, today) for s in nearest], "or") + "."
                     if nearest else " There is no free time in the next two weeks.")
            raise CommitError(("Sorry, that time was just taken. " if "taken" in why else "") + why + offer)
        at = stored_time(now)
        if task.action == "book":
            customer, phone = task.customer or "", task.caller_number
            if not customer:
                raise CommitError("the booking has no name yet")
            uid = f"{secrets.token_hex(8)}@voicebridge"
            booking_id = tx.insert(
                "INSERT INTO bookings (uid, call_sid, created_at, updated_at, status, service, service_name, starts_at,"
                " ends_at, time_zone, customer, phone, price_cents, sequence, business)"
                " VALUES (?, ?, ?, ?, 'confirmed', ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (uid, call_sid, at, at, service.key, service.name, stored_time(start), stored_time(end),
                 self.business.time_zone, customer, phone, service.price_cents, tx.business))
            # the uid names the booking number too, so the calendar's event says which booking it is
            uid = f"{booking_id}-{uid}"
            tx.execute("UPDATE bookings SET uid = ? WHERE id = ?", (uid, booking_id))
            change, event, sequence, previous = "created", "booking.created", 0, None
        else:
            assert current is not None
            booking_id, uid, sequence = current.id, current.uid, current.sequence + 1
            customer, phone, previous = current.customer, current.phone, current
            tx.execute("UPDATE bookings SET starts_at = ?, ends_at = ?, sequence = ?, updated_at = ? WHERE id = ?",
                       (stored_time(start), stored_time(end), sequence, at, booking_id))
            change, event = "moved", "booking.moved"
        tx.execute("INSERT INTO booking_changes (booking_id, call_sid, at, change, starts_at, ends_at)"
                   " VALUES (?, ?, ?, ?, ?, ?)", (booking_id, call_sid, at, change, stored_time(start), stored_time(end)))
        body = self._payload(booking_id, event, service.key, service.name, start, end, customer, phone, call_sid,
                             service.price_cents)
        if previous is not None:
            body["previous_start"] = previous.start.astimezone(self.business.tz).isoformat()
        tx.enqueue(event, f"booking:{booking_id}", body)
        tx.enqueue("calendar.put", f"booking:{booking_id}",
                   self._event(uid, service.name, start, end, customer, booking_id, sequence), target="calendar")
        task.committed.append(booking_id)
        task.mine[booking_id] = StoredBooking(booking_id, uid, service.key, service.name, start.astimezone(slots.UTC),
                                              end, customer, phone, sequence)
        task.action = None
        return Committed(booking_id, {"booking_id": booking_id, "change": change, "service": service.name,
                                      "when": say_when(start, slots.local_today(self.business, now)),
                                      "customer": customer})

    def _current(self, tx: Transaction, booking_id: int) -> StoredBooking:
        current = get_stored(tx, booking_id, business=tx.business)
        if current is None:
            raise CommitError(f"booking {booking_id} was cancelled meanwhile; there is nothing to change")
        return current

    def _cancel(self, tx: Transaction, call_sid: str | None, task: BookingRequest, now: dt.datetime) -> Committed:
        assert task.booking_id is not None
        current = self._current(tx, task.booking_id)
        at = stored_time(now)
        sequence = current.sequence + 1
        tx.execute("UPDATE bookings SET status = 'cancelled', sequence = ?, updated_at = ? WHERE id = ?",
                   (sequence, at, current.id))
        tx.execute("INSERT INTO booking_changes (booking_id, call_sid, at, change, starts_at, ends_at)"
                   " VALUES (?, ?, ?, 'cancelled', ?, ?)", (current.id, call_sid, at, stored_time(current.start),
                                                            stored_time(current.end)))
        start = current.start.astimezone(self.business.tz)
        body = self._payload(current.id, "booking.cancelled", current.service, current.service_name, start,
                             current.end, current.customer, current.phone, call_sid, None)
        body.pop("price_cents")
        tx.enqueue("booking.cancelled", f"booking:{current.id}", body)
        tx.enqueue("calendar.delete", f"booking:{current.id}", {"uid": current.uid}, target="calendar")
        task.mine.pop(current.id, None)
        task.committed.append(current.id)
        task.action = None
        return Committed(current.id, {"booking_id": current.id, "change": "cancelled", "service": current.service_name,
                                      "when": say_when(start, slots.local_today(self.business, now)),
                                      "customer": current.customer})

    def _payload(self, booking_id: int, event: str, service: str, service_name: str, start: dt.datetime,
                 end: dt.datetime, customer: str, phone: str | None, call_sid: str | None,
                 price_cents: int | None) -> dict[str, Any]:
        tz = self.business.tz
        return {"event": event, "booking_id": booking_id, "business": self.business.name, "service": service,
                "service_name": service_name, "start": start.astimezone(tz).isoformat(),
                "end": end.astimezone(tz).isoformat(), "time_zone": self.business.time_zone, "customer": customer,
                "phone": phone, "call_sid": call_sid, "price_cents": price_cents}

    def _event(self, uid: str, service_name: str, start: dt.datetime, end: dt.datetime, customer: str,
               booking_id: int, sequence: int) -> dict[str, Any]:
        tz = self.business.tz
        return {"uid": uid, "start": start.astimezone(tz).isoformat(), "end": end.astimezone(tz).isoformat(),
                "tz": self.business.time_zone, "summary": f"{service_name.capitalize()}: {customer}",
                "description": f"Booked by phone ({self.business.name}), booking {booking_id}.",
                "sequence": sequence}
