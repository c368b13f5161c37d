"""Dates and times as a caller says them and hears them.

`say_when` reads a local time back in words ("Friday the 11th of December at 2 pm");
`parse_day` and `parse_time` accept what a model passes for what the caller said: an ISO date
or "today", "tomorrow", a weekday ("friday": the next one after today); "14:00", "2 pm", "2:30pm",
"noon". Pure: the business's local `today` is an argument.
"""

from __future__ import annotations

import datetime as dt
import re

from voicebridge.i18n import ENGLISH, Translator

WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_TIME = re.compile(r"(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.|o'?clock)?")


def ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }".replace(" ", "")


def say_day(day: dt.date, today: dt.date | None = None, tr: Translator = ENGLISH.default) -> str:
    """ "Friday the 11th of December" (with the year when it is not this year's); other languages as Babel
    says the weekday and date ("viernes, 11 de diciembre")."""
    if not tr.english:
        return tr.day(day, with_year=today is not None and day.year != today.year)
    text = f"{WEEKDAY_NAMES[day.weekday()].capitalize()} the {ordinal(day.day)} of {MONTHS[day.month - 1]}"
    if today is not None and day.year != today.year:
        text += f" {day.year}"
    return text


def say_time(t: dt.time | dt.datetime, tr: Translator = ENGLISH.default) -> str:
    """ "2 pm", "2:30 pm", "9 am", "noon", "midnight"; other languages as Babel's short time ("14:00")."""
    if not tr.english:
        return tr.time(t)
    h, m = t.hour, t.minute
    if m == 0 and h == 12:
        return "noon"
    if m == 0 and h == 0:
        return "midnight"
    suffix = "am" if h < 12 else "pm"
    h12 = h % 12 or 12
    return f"{h12} {suffix}" if m == 0 else f"{h12}:{m:02d} {suffix}"


def say_when(local: dt.datetime, today: dt.date | None = None, tr: Translator = ENGLISH.default) -> str:
    """ "Friday the 11th of December at 2 pm" for a local (business time zone) datetime, in `tr`'s language."""
    return tr("{day} at {time}", day=say_day(local.date(), today, tr), time=say_time(local, tr))


def _looks_iso(words: str) -> bool:
    """YYYY-MM-DD that is a real date (so 2026-02-30 falls through to the words, and then fails there)."""
    try:
        dt.date.fromisoformat(words)
    except ValueError:
        return False
    return True


def parse_day(text: str, today: dt.date) -> dt.date:
    """A day from an ISO date or the caller's words; ValueError with a sayable message otherwise."""
    words = " ".join(text.lower().replace(",", " ").split())
    if _looks_iso(words):  # the model's own ISO date; anything else is the caller's words below
        return dt.date.fromisoformat(words)
    if words == "today":
        return today
    if words == "tomorrow":
        return today + dt.timedelta(days=1)
    if words in ("day after tomorrow", "the day after tomorrow"):
        return today + dt.timedelta(days=2)
    for prefix in ("next ", "this ", "on "):
        if words.startswith(prefix):
            words = words[len(prefix):]
    if words in WEEKDAY_NAMES:
        ahead = (WEEKDAY_NAMES.index(words) - today.weekday()) % 7 or 7
        return today + dt.timedelta(days=ahead)
    raise ValueError(f"{text!r} is not a day I understand; give the date as YYYY-MM-DD")


def parse_time(text: str) -> dt.time:
    """A time of day from "14:00", "2 pm", "2:30pm", "noon"; a bare hour from 1 to 7 means pm."""
    words = " ".join(text.lower().split())
    if words in ("noon", "midday", "12 noon"):
        return dt.time(12, 0)
    m = _TIME.fullmatch(words)
    if m is None:
        raise ValueError(f"{text!r} is not a time I understand; give it as HH:MM on the 24-hour clock")
    h, minute = int(m.group(1)), int(m.group(2) or 0)
    mark = (m.group(3) or "").replace(".", "")
    if minute > 59 or h > 23 or (mark in ("am", "pm") and not 1 <= h <= 12):
        raise ValueError(f"{text!r} is not a time of day")
    if mark == "pm" and h < 12:
        h += 12
    elif mark == "am" and h == 12:
        h = 0
    elif mark not in ("am", "pm") and m.group(2) is None and 1 <= h <= 7:
        h += 12  # "at two": nobody books a haircut at 2 in the morning
    return dt.time(h, minute)
