"""The appointments job's tools on a fixed clock: what the model is told, what is refused and why.

The business is the packaged salon (New York time, open Tuesday to Saturday with a lunch break,
15-minute slots, a 10-minute buffer after each appointment, an hour's notice, 60 days ahead).
"Now" is Friday 4 December 2026, 10 am in New York.
"""

from __future__ import annotations

import datetime as dt

import pytest

from appointments_helpers import BUSINESS, CALLER, JOB, NOW, UTC, loaded, local, run, stored
from voicebridge.jobs.appointments import slots
from voicebridge.jobs.appointments.booking import BookingRequest
from voicebridge.jobs.appointments.words import parse_day, parse_time, say_day, say_when

TUESDAY = dt.date(2026, 12, 8)


def task(**found: object) -> BookingRequest:
    t = JOB.new_task(CALLER)
    t.found = loaded(TUESDAY, **found)  # type: ignore[arg-type]
    return t


# -- the words ----------------------------------------------------------------------------


@pytest.mark.parametrize("when, words", [
    (local(2026, 12, 11, 14), "Friday the 11th of December at 2 pm"),
    (local(2026, 12, 1, 9, 30), "Tuesday the 1st of December at 9:30 am"),
    (local(2026, 12, 2, 12), "Wednesday the 2nd of December at noon"),
    (local(2026, 12, 3, 17, 45), "Thursday the 3rd of December at 5:45 pm"),
    (local(2026, 12, 12, 10), "Saturday the 12th of December at 10 am"),
    (local(2026, 12, 22, 13, 15), "Tuesday the 22nd of December at 1:15 pm"),
    (local(2026, 12, 13, 0), "Sunday the 13th of December at midnight"),
])
def test_a_time_is_read_back_in_words(when: dt.datetime, words: str) -> None:
    assert say_when(when, NOW.date()) == words


def test_the_year_is_said_only_when_it_is_not_this_year() -> None:
    assert say_day(dt.date(2027, 1, 5), NOW.date()) == "Tuesday the 5th of January 2027"


@pytest.mark.parametrize("text, day", [("2026-12-11", dt.date(2026, 12, 11)), ("today", dt.date(2026, 12, 4)),
                                       ("tomorrow", dt.date(2026, 12, 5)), ("Tuesday", TUESDAY),
                                       ("next friday", dt.date(2026, 12, 11)), ("friday", dt.date(2026, 12, 11))])
def test_days_resolve_from_the_business_local_date(text: str, day: dt.date) -> None:
    assert parse_day(text, NOW.astimezone(BUSINESS.tz).date()) == day


@pytest.mark.parametrize("text, at", [("14:00", dt.time(14)), ("2 pm", dt.time(14)), ("2:30pm", dt.time(14, 30)),
                                      ("two", None), ("2", dt.time(14)), ("9", dt.time(9)), ("noon", dt.time(12)),
                                      ("12 am", dt.time(0)), ("25:00", None), ("13 pm", None)])
def test_times_are_read_as_a_caller_means_them(text: str, at: dt.time | None) -> None:
    if at is None:
        with pytest.raises(ValueError):
            parse_time(text)
    else:
        assert parse_time(text) == at


def test_the_instructions_carry_the_local_date_time_and_time_zone() -> None:
    text = JOB.instructions(NOW)
    assert "It is now Friday the 4th of December 2026, 10 am (Friday 2026-12-04 10:00, time zone America/New_York)" in text
    assert "haircut (30 minutes, $25.00)" in text and "Monday: closed" in text


# -- booking ------------------------------------------------------------------------------


def test_booking_reads_back_the_date_in_words_and_asks_for_a_yes() -> None:
    t = task()
    result = run(t, "book_appointment", service="a haircut", date="tuesday", time="2 pm", name="Sam")
    assert result.ok and result.intent == "review" and result.changed
    assert result.output["read_back"] == ("Here is what I have: a haircut on Tuesday the 8th of December at 2 pm, "
                                          "for Sam. It costs $25.00. Shall I book it?")
    assert (t.action, t.service, t.start, t.customer) == ("book", "haircut", local(2026, 12, 8, 14), "Sam")


@pytest.mark.parametrize("date, time, says", [
    ("2026-12-04", "09:00", "Friday the 4th of December at 9 am is in the past."),
    ("2026-12-04", "10:30", "We need at least 60 minutes' notice; 10:30 am is too soon."),
    ("2026-12-07", "14:00", "We are closed on Mondays."),
    ("2026-12-25", "14:00", "We are closed on Friday the 25th of December."),
    ("2027-02-06", "10:00", "We only book up to 60 days ahead; Saturday the 6th of February 2027 is too far."),
    ("2026-12-08", "14:05", "Appointments start every 15 minutes; 2:05 pm is not a start time."),
    ("2026-12-08", "12:15", "A haircut takes 30 minutes and Tuesday the 8th of December at 12:15 pm is outside our "
                            "opening hours that day (9 am to 12:30 pm and 1:30 pm to 6 pm)."),
    ("2026-12-08", "17:45", "outside our opening hours"),
    ("2026-12-08", "07:00", "outside our opening hours"),
])
def test_a_slot_outside_the_rules_is_refused_with_the_reason_and_nearest_times(date: str, time: str, says: str) -> None:
    t = task()
    day = dt.date.fromisoformat(date)
    t.found = loaded(day)
    result = run(t, "book_appointment", service="haircut", date=date, time=time, name="Sam")
    assert not result.ok and says in result.output["error"]
    assert t.action is None  # nothing was put together


def test_a_taken_slot_is_refused_and_the_nearest_free_ones_offered() -> None:
    """A stored 2 pm haircut (plus the 10-minute buffer) blocks 1:30 to 2:30; the nearest free are offered."""
    t = task(booked=(stored(7, local(2026, 12, 8, 14), customer="Alex", phone="+15550000000"),))
    result = run(t, "book_appointment", service="haircut", date="2026-12-08", time="14:15", name="Sam")
    assert result.output["error"] == (
        "Tuesday the 8th of December at 2:15 pm is already taken. The nearest free times are Tuesday the 8th of "
        "December at 2:45 pm, Tuesday the 8th of December at 3 pm or Tuesday the 8th of December at 3:15 pm.")
    assert run(t, "book_appointment", service="haircut", date="2026-12-08", time="14:30", name="Sam").ok is False
    assert run(t, "book_appointment", service="haircut", date="2026-12-08", time="14:45", name="Sam").ok


def test_the_external_calendar_busy_times_block_slots_too() -> None:
    busy = (local(2026, 12, 8, 9).astimezone(UTC), local(2026, 12, 8, 11).astimezone(UTC))
    t = task(external=(busy,))
    assert "already taken" in run(t, "book_appointment", service="haircut", date="2026-12-08", time="10:00",
                                  name="Sam").output["error"]
    days = run(t, "check_availability", service="haircut", date="2026-12-08").output["days"]
    assert days[0]["free_start_times"] == ["11:15 am to noon", "1:30 pm to 5:30 pm"]


def test_a_calendar_that_cannot_be_read_is_said_so_and_nothing_is_offered() -> None:
    t = task(calendar_error="TooSlowError")
    result = run(t, "check_availability", service="haircut", date="2026-12-08")
    assert not result.ok and "The calendar cannot be checked right now" in result.output["error"]


def test_a_day_that_was_not_loaded_is_not_guessed() -> None:
    t = task()
    result = run(t, "book_appointment", service="haircut", date="2027-01-20", time="10:00", name="Sam")
    assert not result.ok and "could not be loaded" in result.output["error"]


def test_availability_lists_free_start_times_as_runs_per_day() -> None:
    t = JOB.new_task(CALLER)
    t.found = loaded(dt.date(2026, 12, 7), TUESDAY, booked=(stored(7, local(2026, 12, 8, 14)),))
    out = run(t, "check_availability", service="haircut", date="2026-12-07", to_date="2026-12-08").output
    assert out["service"] == "haircut (30 minutes, $25.00)" and out["every_minutes"] == 15
    monday, tuesday = out["days"]
    assert monday == {"day": "Monday the 7th of December", "date": "2026-12-07", "free_start_times": [],
                      "note": "We are closed on Mondays."}
    assert tuesday["free_start_times"] == ["9 am to noon", "2:45 pm to 5:30 pm"]


@pytest.mark.parametrize("name, args, says", [
    ("book_appointment", {"service": "massage", "date": "tuesday", "time": "2 pm", "name": "Sam"},
     "We don't offer massage. We do haircut, cut and color, beard trim or consultation."),
    ("book_appointment", {"service": "haircut", "date": "someday", "time": "2 pm", "name": "Sam"},
     "'someday' is not a day I understand"),
    ("book_appointment", {"service": "haircut", "date": "tuesday", "time": "2 pm"}, "book_appointment needs name."),
    ("book_appointment", {"service": "haircut", "date": "tuesday", "time": "2 pm", "name": "Sam", "x": 1},
     "book_appointment has no argument 'x'"),
    ("check_availability", {"service": "haircut", "date": "2026-12-08", "to_date": "2026-12-20"},
     "Ask about at most 7 days at a time."),
    ("confirm_booking", {}, "There is nothing to confirm yet"),
    ("cancel_appointment", {}, "I have no bookings for this caller yet: call find_my_bookings first."),
    ("fly_me_to_the_moon", {}, "There is no tool named 'fly_me_to_the_moon'."),
])
def test_bad_arguments_are_refused_with_words_the_model_can_say(name: str, args: dict[str, object], says: str) -> None:
    result = run(task(), name, **args)
    assert not result.ok and says in result.output["error"]


# -- the caller's own bookings --------------------------------------------------------------


def test_bookings_found_by_caller_id_can_be_moved_with_a_read_back() -> None:
    mine = stored(3, local(2026, 12, 8, 14))
    t = task(mine=(mine,))
    listed = run(t, "find_my_bookings")
    assert listed.output["bookings"] == [{"booking": 3, "what": "a haircut on Tuesday the 8th of December at 2 pm"}]
    t.found = loaded(dt.date(2026, 12, 12), booked=(mine,), mine=(mine,))
    moved = run(t, "move_appointment", date="2026-12-12", time="10:00")
    assert moved.intent == "review" and moved.output["read_back"] == (
        "Here is what I have: your haircut on Tuesday the 8th of December at 2 pm moves to Saturday the 12th of "
        "December at 10 am. Shall I move it?")
    assert (t.action, t.booking_id, t.start) == ("move", 3, local(2026, 12, 12, 10))


def test_moving_a_booking_within_its_own_time_does_not_clash_with_itself() -> None:
    mine = stored(3, local(2026, 12, 8, 14))
    t = task(booked=(mine,), mine=(mine,))
    run(t, "find_my_bookings")
    assert run(t, "move_appointment", booking=3, date="2026-12-08", time="14:15").ok


def test_bookings_found_by_name_need_the_callers_confirmation_before_a_change() -> None:
    theirs = stored(5, local(2026, 12, 9, 11), customer="Robin", phone="+15550001111")
    t = task(by_name=(theirs,))
    found = run(t, "find_my_bookings", name="Robin")
    assert found.output["found_under_name"] == [
        {"booking": 5, "what": "a haircut on Wednesday the 9th of December at 11 am"}]
    assert "ask the caller whether they are theirs" in found.output["instruction"]
    assert "call find_my_bookings first" in run(t, "cancel_appointment", booking=5).output["error"]
    assert run(t, "find_my_bookings", confirmed=True).output["bookings"][0]["booking"] == 5
    cancel = run(t, "cancel_appointment", booking=5)
    assert cancel.output["read_back"] == ("Here is what I have: cancel your haircut on Wednesday the 9th of December "
                                          "at 11 am. Shall I cancel it?")
    assert (t.action, t.booking_id) == ("cancel", 5)


def test_no_bookings_for_the_number_asks_for_the_name() -> None:
    out = run(task(), "find_my_bookings").output
    assert out["bookings"] == [] and "Ask for the name the booking is under." in out["message"]


def test_a_booking_that_is_not_the_callers_cannot_be_touched() -> None:
    mine = stored(3, local(2026, 12, 8, 14))
    t = task(mine=(mine,))
    run(t, "find_my_bookings")
    assert "Booking 9 is not one of the caller's bookings (3)" in run(t, "cancel_appointment", booking=9).output["error"]


# -- time zones and DST -------------------------------------------------------------------------


def test_across_the_spring_dst_change_local_times_stay_local() -> None:
    """New York springs forward on Sunday 14 March 2027: 2 pm is 19:00 UTC before and 18:00 UTC after."""
    now = dt.datetime(2027, 3, 10, 15, 0, tzinfo=UTC)
    before, after = dt.date(2027, 3, 13), dt.date(2027, 3, 16)
    t = JOB.new_task(CALLER)
    t.found = loaded(before, after)
    a = run(t, "book_appointment", now=now, service="haircut", date="2027-03-13", time="14:00", name="Sam")
    assert a.ok and t.start is not None and t.start.astimezone(UTC).hour == 19
    b = run(t, "book_appointment", now=now, service="haircut", date="2027-03-16", time="14:00", name="Sam")
    assert b.ok and t.start is not None and t.start.astimezone(UTC).hour == 18
    assert "Tuesday the 16th of March at 2 pm" in b.output["read_back"]
    # the changeover day is 23 hours long, and 2:30 am does not exist on it
    start, end = slots.day_window(BUSINESS, dt.date(2027, 3, 14), dt.date(2027, 3, 14))
    assert end - start == dt.timedelta(hours=23)
    assert slots.local_start(BUSINESS, dt.date(2027, 3, 14), dt.time(2, 30)) is None
    # the same wall-clock opening hours on both sides of the change
    days = run(t, "check_availability", now=now, service="haircut", date="2027-03-13", to_date="2027-03-16")
    free = {d["date"]: d["free_start_times"] for d in days.output["days"]}
    assert free["2027-03-13"] == ["9 am to 3:30 pm"] and free["2027-03-16"] == ["9 am to noon", "1:30 pm to 5:30 pm"]


def test_a_day_without_free_times_says_why() -> None:
    full = tuple(stored(n, local(2026, 12, 12, 9) + dt.timedelta(minutes=40 * n)) for n in range(11))
    t = JOB.new_task(CALLER)
    t.found = loaded(dt.date(2026, 12, 3), dt.date(2026, 12, 12), booked=full)
    days = {d["date"]: d for d in run(t, "check_availability", service="haircut", date="2026-12-06",
                                      to_date="2026-12-12").output["days"]}
    assert days["2026-12-06"]["note"] == "We are closed on Sundays."
    assert days["2026-12-12"]["free_start_times"] == [] and days["2026-12-12"]["note"] == "Nothing is free that day."
    t.found = loaded(dt.date(2026, 12, 25))
    assert run(t, "check_availability", service="haircut", date="2026-12-25").output["days"][0]["note"] == (
        "We are closed on Friday the 25th of December.")
