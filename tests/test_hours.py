"""Opening hours kept in the shop's time zone (voicebridge.jobs.hours): past midnight, closures, DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from voicebridge.jobs.hours import (
    OpeningHours,
    is_open,
    next_opening,
    parse_closure,
    parse_intervals,
    say_opening,
)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc


def week(*days: str, zone: str = "America/New_York", closures: tuple[str, ...] = ()) -> OpeningHours:
    assert len(days) == 7
    return OpeningHours(zone, tuple(parse_intervals(d) for d in days), tuple(parse_closure(c) for c in closures))


def ny(*args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=NY, fold=fold)  # type: ignore[misc]


def next_words(hours: OpeningHours, now: dt.datetime) -> str:
    opening = next_opening(hours, now)
    assert opening is not None
    return say_opening(opening, now, NY)


# Weekdays 11-22, Friday until 01:30 on Saturday, Saturday until 01:30 on Sunday, Sunday closed.
LATE = week("11:00-22:00", "11:00-22:00", "11:00-22:00", "11:00-22:00", "17:00-01:30", "17:00-01:30", "closed")


def test_an_interval_past_midnight_belongs_to_the_day_it_opens() -> None:
    """Friday 17:00-01:30 is open at 00:30 on Saturday and closed at 01:30; Sunday's 00:30 is Saturday's."""
    assert not is_open(LATE, ny(2026, 12, 4, 16, 59))  # a Friday
    assert is_open(LATE, ny(2026, 12, 4, 17, 0))
    assert is_open(LATE, ny(2026, 12, 5, 0, 30))  # Saturday after midnight: still Friday's night
    assert is_open(LATE, ny(2026, 12, 5, 1, 29))
    assert not is_open(LATE, ny(2026, 12, 5, 1, 30))
    assert not is_open(LATE, ny(2026, 12, 5, 11, 0))  # Saturday opens at 17:00 only
    assert is_open(LATE, ny(2026, 12, 6, 1, 0))  # Sunday (closed) at 1 am: Saturday's night
    assert not is_open(LATE, ny(2026, 12, 6, 12, 0))
    # the same instant given in UTC gives the same answer
    assert is_open(LATE, ny(2026, 12, 5, 0, 30).astimezone(UTC))


def test_a_closure_day_closes_what_opens_on_it_but_not_the_night_before() -> None:
    """Saturday closed for a holiday: Friday's night still runs into Saturday; Saturday's evening does not open."""
    hours = week("11:00-22:00", "11:00-22:00", "11:00-22:00", "11:00-22:00", "17:00-01:30", "17:00-01:30",
                 "closed", closures=("2026-12-05",))
    assert is_open(hours, ny(2026, 12, 5, 1, 0))
    assert not is_open(hours, ny(2026, 12, 5, 18, 0))
    assert not is_open(hours, ny(2026, 12, 6, 1, 0))  # Saturday's night never opened
    assert next_opening(hours, ny(2026, 12, 5, 2, 0)) == ny(2026, 12, 7, 11, 0)  # Monday


def test_spring_forward_an_opening_in_the_gap_opens_when_the_gap_ends() -> None:
    """2026-03-08 in New York skips 02:00-03:00: a 02:30 opening opens at 03:00 EDT; a night across it is short."""
    hours = week("closed", "closed", "closed", "closed", "closed", "20:00-03:00", "02:30-10:00")
    sunday_three = ny(2026, 3, 8, 3, 0)
    assert sunday_three.utcoffset() == dt.timedelta(hours=-4)
    # Saturday 20:00 EST to Sunday 03:00 EDT: six hours of real time, then Sunday's opening at once
    assert is_open(hours, ny(2026, 3, 7, 20, 0))
    assert is_open(hours, ny(2026, 3, 8, 1, 59))
    assert is_open(hours, sunday_three)  # Sunday's own interval, opened at the end of the gap
    assert next_opening(hours, ny(2026, 3, 7, 19, 0)) == ny(2026, 3, 7, 20, 0)
    only_sunday = week("closed", "closed", "closed", "closed", "closed", "closed", "02:30-10:00")
    assert not is_open(only_sunday, ny(2026, 3, 8, 1, 59))
    assert is_open(only_sunday, sunday_three)
    opening = next_opening(only_sunday, ny(2026, 3, 8, 1, 0))
    assert opening == sunday_three and opening.astimezone(UTC) == dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    # 10:00 EDT is 14:00 UTC, one hour earlier in UTC than on a winter Sunday
    assert is_open(only_sunday, dt.datetime(2026, 3, 8, 13, 59, tzinfo=UTC))
    assert not is_open(only_sunday, dt.datetime(2026, 3, 8, 14, 0, tzinfo=UTC))


def test_fall_back_a_time_in_the_fold_is_its_first_occurrence() -> None:
    """2026-11-01 in New York repeats 01:00-02:00: Saturday 18:00-01:30 closes at the first 01:30 (EDT)."""
    hours = week("closed", "closed", "closed", "closed", "closed", "18:00-01:30", "01:30-04:00")
    first = ny(2026, 11, 1, 1, 15, fold=0)  # EDT
    second = ny(2026, 11, 1, 1, 15, fold=1)  # EST, an hour later
    assert first.utcoffset() == dt.timedelta(hours=-4) and second.utcoffset() == dt.timedelta(hours=-5)
    saturday_only = week("closed", "closed", "closed", "closed", "closed", "18:00-01:30", "closed")
    assert is_open(saturday_only, first)
    assert not is_open(saturday_only, second)
    assert not is_open(saturday_only, dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC))  # the first 01:30
    # Sunday's 01:30 opening is the first 01:30 too: from Saturday night it follows on at once
    assert is_open(hours, dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC))
    assert next_opening(saturday_only, dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)) == ny(2026, 11, 7, 18, 0)
    # 04:00 EST is 09:00 UTC: the Sunday interval lasts 3.5 hours of wall clock, 3.5 + 1 of real time
    assert is_open(hours, dt.datetime(2026, 11, 1, 8, 59, tzinfo=UTC))
    assert not is_open(hours, dt.datetime(2026, 11, 1, 9, 0, tzinfo=UTC))


def test_berlin_summer_time_moves_the_utc_hours() -> None:
    """Europe/Berlin: 11:00 local is 10:00 UTC in winter and 09:00 UTC in summer (2026-03-29 changes)."""
    hours = week(*(["11:00-22:00"] * 7), zone="Europe/Berlin")
    assert not is_open(hours, dt.datetime(2026, 3, 28, 9, 30, tzinfo=UTC))
    assert is_open(hours, dt.datetime(2026, 3, 28, 10, 0, tzinfo=UTC))
    assert is_open(hours, dt.datetime(2026, 3, 30, 9, 30, tzinfo=UTC))
    assert next_opening(hours, dt.datetime(2026, 3, 29, 22, 0, tzinfo=UTC)) == dt.datetime(
        2026, 3, 30, 11, 0, tzinfo=BERLIN)


def test_next_opening_across_a_week_of_closures() -> None:
    """Closed from Christmas Eve to New Year's Day: the next opening is the 2nd of January."""
    hours = week(*(["11:00-22:00"] * 6), "12:00-21:00", zone="Europe/Berlin",
                 closures=("2026-12-24..2026-12-31", "2027-01-01"))
    now = dt.datetime(2026, 12, 23, 22, 30, tzinfo=BERLIN)
    assert not is_open(hours, now)
    opening = next_opening(hours, now)
    assert opening == dt.datetime(2027, 1, 2, 11, 0, tzinfo=BERLIN)
    assert say_opening(opening, now, BERLIN) == "Saturday, January 2 at 11 am"
    assert not any(is_open(hours, dt.datetime(2026, 12, d, 15, 0, tzinfo=BERLIN)) for d in range(24, 32))
    never = week(*(["closed"] * 7))
    assert next_opening(never, now) is None


def test_the_next_opening_in_words_in_the_shops_time_zone() -> None:
    """ "today at 5 pm", "tomorrow at 11 am", "Monday at 5 pm": in the shop's time, not UTC's."""
    friday_morning = ny(2026, 12, 4, 9, 0)
    assert next_words(LATE, friday_morning) == "today at 5 pm"
    thursday_night = ny(2026, 12, 3, 23, 0)  # 04:00 UTC on Friday: still Thursday in New York
    assert next_words(LATE, thursday_night) == "tomorrow at 5 pm"
    sunday = ny(2026, 12, 6, 12, 0)
    assert next_words(LATE, sunday) == "tomorrow at 11 am"
    saturday_late = ny(2026, 12, 5, 2, 0)
    lunch = week("closed", "closed", "closed", "closed", "closed", "closed", "closed")
    assert next_opening(lunch, saturday_late) is None
    monday_evening = week("17:00-22:00", *(["closed"] * 6))
    assert next_words(monday_evening, saturday_late) == "Monday at 5 pm"
    half_past = week(*(["11:30-14:00, 17:00-22:00"] * 7))
    assert next_words(half_past, ny(2026, 12, 4, 15, 0)) == (
        "today at 5 pm")
    assert say_opening(ny(2026, 12, 4, 12, 0), friday_morning, NY) == "today at noon"


def test_staff_override_wins_closed_over_the_hours_and_open_outside_them() -> None:
    """Staff's "closed now" closes inside the hours; "open" opens outside them; None follows the hours."""
    lunch_time = ny(2026, 12, 3, 12, 0)
    assert is_open(LATE, lunch_time)
    assert not is_open(LATE, lunch_time, override="closed")
    assert is_open(LATE, ny(2026, 12, 3, 23, 0), override="open")


def test_bad_values_say_what_is_wrong() -> None:
    """Ranges, closures and their errors."""
    assert parse_intervals("11:00-14:00, 17:00-01:30") == ((660, 840), (1020, 1530))
    assert parse_intervals("Closed") == ()
    assert parse_intervals("00:00-24:00") == ((0, 1440),)
    with pytest.raises(ValueError, match="overlaps"):
        parse_intervals("11:00-15:00, 14:00-22:00")
    with pytest.raises(ValueError, match="not a time of day"):
        parse_intervals("24:30-25:00")
    assert parse_closure(dt.date(2026, 12, 25)) == (dt.date(2026, 12, 25), dt.date(2026, 12, 25))
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_closure("2026-12-26..2026-12-24")
    with pytest.raises(ValueError, match="not a date"):
        parse_closure("Christmas")
