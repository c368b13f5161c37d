"""Opening hours in a business's own time zone: weekly intervals, closure dates, open or not.

Pure (no I/O, no clock): "now" is always an argument, an aware datetime.

- A week is seven lists of intervals (Monday first), each `(open, close)` in minutes after the
  local midnight of the day it OPENS. `close` may pass midnight ("17:00-01:30" is (1020, 1530)):
  such an interval belongs to the day it opens, so closing a day (a holiday) closes the intervals
  that open on it, and a Friday night running into Saturday still runs when Saturday is closed.
- Closures are local dates, single days or inclusive ranges.
- Wall times are turned into instants in the business's time zone:
  - an opening or closing time inside a DST gap (02:30 on the spring-forward night, which does
    not exist) is moved to the first instant after the gap (03:00): the shop opens as soon as
    the clock shows a time at or past its opening;
  - a time inside a DST fold (01:30 on the fall-back night, which happens twice) is its first
    occurrence (fold=0).
- `override` is staff's word for now: "closed" (the staff page's "closed now") wins over the
  hours; "open" opens outside them.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Any, Literal

import attrs

from voicebridge.i18n import Translator

UTC = dt.timezone.utc
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DAY_MIN = 24 * 60
SEARCH_DAYS = 400  # how far next_opening looks: a year of closures and then some

Override = Literal["open", "closed"] | None
Interval = tuple[int, int]  # minutes after the opening day's local midnight: [open, close)

_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*[-\u2013]\s*(\d{1,2}):(\d{2})")


@attrs.frozen
class OpeningHours:
    """When a business is open, in its local time."""

    time_zone: str  # an IANA name ("America/New_York")
    week: tuple[tuple[Interval, ...], ...]  # seven entries, Monday first
    closures: tuple[tuple[dt.date, dt.date], ...] = ()  # inclusive local date ranges

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def closed_on(self, day: dt.date) -> bool:
        """True when `day` is a closure date (its intervals do not open)."""
        return any(first <= day <= last for first, last in self.closures)

    def instants(self, day: dt.date) -> list[tuple[dt.datetime, dt.datetime]]:
        """The intervals opening on local `day`, as UTC [start, end) pairs (none on a closure date)."""
        if self.closed_on(day):
            return []
        tz = self.tz
        out = []
        for open_min, close_min in self.week[day.weekday()]:
            start, end = wall_instant(day, open_min, tz), wall_instant(day, close_min, tz)
            if start < end:
                out.append((start, end))
        return out


def wall_instant(day: dt.date, minutes: int, tz: dt.tzinfo) -> dt.datetime:
    """The UTC instant of local `day` + `minutes` (may pass midnight); gaps go forward, folds take the first."""
    naive = dt.datetime.combine(day, dt.time(0)) + dt.timedelta(minutes=minutes)
    if _exists(naive, tz):
        return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    for step in range(1, DAY_MIN + 1):  # the first wall minute after the gap (gaps end on a minute)
        later = naive + dt.timedelta(minutes=step)
        if _exists(later, tz):
            return later.replace(tzinfo=tz, fold=0).astimezone(UTC)
    raise ValueError(f"no wall time after {naive} exists in {tz}")  # no real zone has a day-long gap


def _exists(naive: dt.datetime, tz: dt.tzinfo) -> bool:
    back = naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    return back == naive


def is_open(hours: OpeningHours, now: dt.datetime, override: Override = None) -> bool:
    """Whether the business is open at aware `now`; staff's `override` wins over the hours."""
    if override is not None:
        return override == "open"
    today = now.astimezone(hours.tz).date()
    at = now.astimezone(UTC)
    for day in (today - dt.timedelta(days=1), today):  # yesterday's interval may run past midnight
        if any(start <= at < end for start, end in hours.instants(day)):
            return True
    return False


def next_opening(hours: OpeningHours, now: dt.datetime) -> dt.datetime | None:
    """The next instant after `now` the business opens, local (its time zone); None if none within a year."""
    today = now.astimezone(hours.tz).date()
    at = now.astimezone(UTC)
    for offset in range(-1, SEARCH_DAYS):
        for start, _end in hours.instants(today + dt.timedelta(days=offset)):
            if start > at:
                return start.astimezone(hours.tz)
    return None


def current_close(hours: OpeningHours, now: dt.datetime) -> dt.datetime | None:
    """When the interval open at `now` closes (local), or None when closed at `now`."""
    today = now.astimezone(hours.tz).date()
    at = now.astimezone(UTC)
    for day in (today - dt.timedelta(days=1), today):
        for start, end in hours.instants(day):
            if start <= at < end:
                return end.astimezone(hours.tz)
    return None


# -- words --------------------------------------------------------------------------------


def say_clock(local: dt.datetime) -> str:
    """ "11 am", "5:30 pm", "noon", "midnight"."""
    h, m = local.hour, local.minute
    if m == 0 and h == 12:
        return "noon"
    if m == 0 and h == 0:
        return "midnight"
    suffix = "am" if h < 12 else "pm"
    h12 = h % 12 or 12
    return f"{h12} {suffix}" if m == 0 else f"{h12}:{m:02d} {suffix}"


def say_opening(opening: dt.datetime, now: dt.datetime, tz: dt.tzinfo, tr: Translator | None = None) -> str:
    """When `opening` is, from `now`, in the business's time: "today at 5 pm", "tomorrow at 11 am",
    "Monday at 5 pm" (within the week), else "Friday, December 25 at 11 am"; in another language
    `tr`'s words and Babel's clock and dates ("mañana a las 11:00")."""
    local = opening.astimezone(tz)
    days = (local.date() - now.astimezone(tz).date()).days
    if tr is not None and not tr.english:
        time = tr.time(local)
        if days == 0:
            return tr("today at {time}", time=time)
        if days == 1:
            return tr("tomorrow at {time}", time=time)
        if days < 7:
            return tr("{weekday} at {time}", weekday=tr.weekday(local.date()), time=time)
        return tr("{day} at {time}", day=tr.day(local.date()), time=time)
    if days == 0:
        day = "today"
    elif days == 1:
        day = "tomorrow"
    elif days < 7:
        day = WEEKDAYS[local.weekday()].capitalize()
    else:
        day = f"{WEEKDAYS[local.weekday()].capitalize()}, {local.strftime('%B')} {local.day}"
    return f"{day} at {say_clock(local)}"


# -- reading a file's values (the loaders add the file and key to each ValueError) ----------


def parse_intervals(text: str) -> tuple[Interval, ...]:
    """ "11:00-14:00, 17:00-01:30" -> ((660, 840), (1020, 1530)); "closed" -> (). ValueError if bad."""
    text = text.strip()
    if text.lower() == "closed":
        return ()
    out: list[Interval] = []
    for part in text.split(","):
        m = _RANGE.fullmatch(part.strip())
        if m is None:
            raise ValueError(f'"{part.strip()}" is not "HH:MM-HH:MM" (24-hour clock) or "closed"')
        oh, om, ch, cm = (int(g) for g in m.groups())
        if oh > 23 or om > 59 or ch > 24 or cm > 59 or (ch == 24 and cm):
            raise ValueError(f'"{part.strip()}" is not a time of day (00:00 to 24:00)')
        open_min, close_min = oh * 60 + om, ch * 60 + cm
        if close_min == open_min:
            raise ValueError(f'"{part.strip()}" opens and closes at the same time')
        if close_min < open_min:
            close_min += DAY_MIN  # past midnight: it belongs to the day it opens
        if out and open_min < out[-1][1]:
            raise ValueError(f'"{part.strip()}" overlaps or comes before the range before it')
        out.append((open_min, close_min))
    return tuple(out)


def parse_closure(value: Any) -> tuple[dt.date, dt.date]:
    """A TOML date, "2026-12-25", or a range "2026-12-24..2026-12-26" (inclusive). ValueError if bad."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value, value
    if not isinstance(value, str):
        raise ValueError(f'expected a date like "2026-12-25" or a range "2026-12-24..2026-12-26", got {value!r}')
    first_text, sep, last_text = value.strip().partition("..")
    try:
        first = dt.date.fromisoformat(first_text.strip())
        last = dt.date.fromisoformat(last_text.strip()) if sep else first
    except ValueError:
        raise ValueError(f'"{value}" is not a date like "2026-12-25" or a range "2026-12-24..2026-12-26"') from None
    if last < first:
        raise ValueError(f'"{value}" ends before it starts')
    return first, last


def check_time_zone(name: Any) -> str:
    """An IANA time zone name zoneinfo knows; ValueError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError('expected an IANA time zone name like "America/New_York"')
    try:
        zoneinfo.ZoneInfo(name.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown time zone "{name}" (use an IANA name like "America/New_York")') from None
    return name.strip()
