"""Free slots and the checks every booking passes: opening hours, closures, notice, horizon, overlap.

Times: the business's opening hours are local (its time zone); busy intervals and "now" are
UTC-aware datetimes; a slot is a local aware datetime. Durations are added in UTC, so an
appointment across a DST change lasts what it says. A buffer is kept after every appointment
(and before, towards the one before it). Pure: "now" and the busy times are arguments.
"""

from __future__ import annotations

import datetime as dt

from voicebridge.jobs.appointments.business import Business, Service
from voicebridge.jobs.appointments.words import say_day, say_time, say_when

UTC = dt.timezone.utc
Interval = tuple[dt.datetime, dt.datetime]  # UTC-aware [start, end)
SEARCH_DAYS = 14  # how far the nearest free slots are looked for


def local_today(business: Business, now: dt.datetime) -> dt.date:
    return now.astimezone(business.tz).date()


def day_window(business: Business, first: dt.date, last: dt.date) -> Interval:
    """UTC bounds of local days `first`..`last` (midnight to midnight, whatever DST does)."""
    tz = business.tz
    start = dt.datetime.combine(first, dt.time(0), tzinfo=tz).astimezone(UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def local_start(business: Business, day: dt.date, at: dt.time) -> dt.datetime | None:
    """The local datetime of `day` at `at`, or None when that wall time does not exist (a DST gap)."""
    tz = business.tz
    value = dt.datetime.combine(day, at, tzinfo=tz)
    back = value.astimezone(UTC).astimezone(tz)
    return value if back.replace(tzinfo=None) == value.replace(tzinfo=None) else None


def _end(start: dt.datetime, service: Service) -> dt.datetime:
    return start.astimezone(UTC) + dt.timedelta(minutes=service.minutes)


def overlaps(business: Business, start: dt.datetime, service: Service, busy: list[Interval]) -> Interval | None:
    """The first busy interval the appointment (with the buffer around it) overlaps, or None."""
    gap = dt.timedelta(minutes=business.buffer_minutes)
    s, e = start.astimezone(UTC), _end(start, service)
    for b_start, b_end in busy:
        if s < b_end + gap and b_start < e + gap:
            return b_start, b_end
    return None


def refusal(business: Business, service: Service, start: dt.datetime, busy: list[Interval],
            now: dt.datetime) -> str | None:
    """Why `service` cannot start at local `start` (a sentence to say), or None when it can."""
    today = local_today(business, now)
    day = start.date()
    when = say_when(start, today)
    if start.astimezone(UTC) <= now:
        return f"{when} is in the past."
    if day > today + dt.timedelta(days=business.horizon_days):
        return f"We only book up to {business.horizon_days} days ahead; {say_day(day, today)} is too far."
    if start.astimezone(UTC) < now + dt.timedelta(minutes=business.min_notice_minutes):
        return f"We need at least {business.min_notice_minutes} minutes' notice; {say_time(start)} is too soon."
    if day in business.closures:
        return f"We are closed on {say_day(day, today)}."
    ranges = business.hours[day.weekday()]
    if not ranges:
        return f"We are closed on {say_day(day, today).split(' the ')[0]}s."
    minute = start.hour * 60 + start.minute
    if start.second or start.microsecond or minute % business.slot_minutes:
        return f"Appointments start every {business.slot_minutes} minutes; {say_time(start)} is not a start time."
    local_end = _end(start, service).astimezone(business.tz)
    end_minute = (local_end - start.replace(hour=0, minute=0)).total_seconds() // 60
    if not any(a <= minute and end_minute <= b for a, b in ranges):
        spans = " and ".join(f"{say_time(dt.time(a // 60, a % 60))} to {say_time(dt.time(b // 60, b % 60))}"
                             for a, b in ranges)
        return (f"A {service.name} takes {service.minutes} minutes and {when} is outside our opening hours "
                f"that day ({spans}).")
    if overlaps(business, start, service, busy) is not None:
        return f"{when} is already taken."
    return None


def free_starts(business: Business, service: Service, day: dt.date, busy: list[Interval],
                now: dt.datetime) -> list[dt.datetime]:
    """Every local start time on `day` at which `service` can be booked."""
    out = []
    step = business.slot_minutes
    for a, b in business.ranges_on(day):
        first = -(-a // step) * step
        for minute in range(first, b - service.minutes + 1, step):
            start = local_start(business, day, dt.time(minute // 60, minute % 60))
            if start is not None and refusal(business, service, start, busy, now) is None:
                out.append(start)
    return out


def nearest_free(business: Business, service: Service, wanted: dt.datetime, busy: list[Interval],
                 now: dt.datetime, n: int = 3) -> list[dt.datetime]:
    """The `n` free starts nearest to `wanted` (same day first, then the days after), in time order."""
    today = local_today(business, now)
    found: list[dt.datetime] = []
    day = max(wanted.date(), today)
    for _ in range(SEARCH_DAYS):
        found += free_starts(business, service, day, busy, now)
        if len(found) >= n:
            break
        day += dt.timedelta(days=1)
    found.sort(key=lambda s: abs((s - wanted).total_seconds()))
    return sorted(found[:n])
