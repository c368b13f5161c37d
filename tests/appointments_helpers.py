"""Shared pieces of the appointments tests: the packaged salon, a fixed clock, loaded calendars."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from voicebridge.engine.job import ToolResult
from voicebridge.jobs.appointments import slots
from voicebridge.jobs.appointments.booking import BookingRequest, Found, Interval, StoredBooking
from voicebridge.jobs.appointments.business import load_business
from voicebridge.jobs.appointments.job import AppointmentsJob

BUSINESS = load_business(None)  # Cut Above Hair Studio, America/New_York, 15-minute slots, 10-minute buffer
JOB = AppointmentsJob(BUSINESS)
TZ = BUSINESS.tz
UTC = dt.timezone.utc
# Friday 4 December 2026, 10:00 in New York (15:00 UTC)
NOW = dt.datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
CALLER = "+15551230001"


def local(y: int, m: int, d: int, h: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, minute, tzinfo=TZ)


def stored(booking_id: int, start: dt.datetime, minutes: int = 30, *, customer: str = "Sam",
           phone: str | None = CALLER, service: str = "haircut") -> StoredBooking:
    return StoredBooking(booking_id, f"{booking_id}-test@voicebridge", service, BUSINESS.service(service).name,
                         start.astimezone(UTC), start.astimezone(UTC) + dt.timedelta(minutes=minutes), customer,
                         phone, 0)


def loaded(first: dt.date, last: dt.date | None = None, *, booked: tuple[StoredBooking, ...] = (),
           external: tuple[Interval, ...] = (), mine: tuple[StoredBooking, ...] = (),
           by_name: tuple[StoredBooking, ...] = (), calendar_error: str | None = None) -> Found:
    """What the daemon's lookup would hand the task for days `first`..`last`."""
    window = slots.day_window(BUSINESS, first, (last or first) + dt.timedelta(days=slots.SEARCH_DAYS))
    return Found(window=window, booked=booked, external=external, mine=mine, by_name=by_name,
                 calendar_error=calendar_error)


def run(task: BookingRequest, tool: str, now: dt.datetime = NOW, **args: Any) -> ToolResult:
    return JOB.run_tool(task, tool, json.dumps(args), now)
