"""The appointment business's file, parsed from TOML and validated.

A business file says `job = "appointments"`, the business's name and time zone (an IANA name,
resolved with zoneinfo), its opening hours per weekday (several ranges a day, or none), the
dates it is closed, its services (name, duration in minutes, optional price), the slot
granularity, how far ahead it books, and the buffer it keeps between appointments.

A bad file raises `BusinessError`; its message names the file, then the TOML line (syntax errors)
or the field path (schema errors, e.g. `services.haircut.minutes`). Unknown keys are errors.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import zoneinfo
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import attrs

from voicebridge.i18n import LanguageError, parse_languages
from voicebridge.jobs import files

from voicebridge.jobs.pizza.menu import format_money, normalize, parse_amount

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_BUSINESS_NAME = "default_business.toml"

_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*[-\u2013]\s*(\d{1,2}):(\d{2})")
_ID = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
MAX_DURATION_MIN = 8 * 60
MAX_HORIZON_DAYS = 366


class BusinessError(Exception):
    """The business file is unreadable or invalid; the message names the file and line or field."""


@attrs.frozen
class Service:
    key: str
    name: str
    minutes: int
    price_cents: int | None
    aliases: tuple[str, ...] = ()

    def describe(self) -> str:
        price = f", {format_money(self.price_cents)}" if self.price_cents is not None else ""
        return f"{self.name} ({self.minutes} minutes{price})"


@attrs.frozen
class Business:
    """What the booking line knows about the business (times of day are minutes after midnight)."""

    source: str
    name: str
    time_zone: str
    hours: tuple[tuple[tuple[int, int], ...], ...]  # per weekday (Monday first): (open, close) ranges
    closures: frozenset[dt.date]
    services: tuple[Service, ...]
    slot_minutes: int = 15
    horizon_days: int = 60
    buffer_minutes: int = 0
    min_notice_minutes: int = 60
    languages: tuple[str, ...] | None = None  # the file's `languages` (first = default); None: not given

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def service(self, key: str) -> Service:
        for s in self.services:
            if s.key == key:
                return s
        raise KeyError(key)

    def find_service(self, text: str) -> Service | None:
        """The service `text` names (its id, name or an alias; case, plurals and articles forgiven)."""
        wanted = normalize(text)
        for article in ("a ", "an ", "the ", "my "):
            if wanted.startswith(article):
                wanted = wanted[len(article):]
        for s in self.services:
            if wanted in {normalize(n) for n in (s.key.replace("-", " "), s.name, *s.aliases)}:
                return s
        return None

    def ranges_on(self, day: dt.date) -> tuple[tuple[int, int], ...]:
        """The opening ranges on `day` (none when closed that weekday or on a closure date)."""
        if day in self.closures:
            return ()
        return self.hours[day.weekday()]

    def hours_text(self) -> str:
        lines = []
        for day, ranges in zip(WEEKDAYS, self.hours):
            spans = ", ".join(f"{_clock(a)}-{_clock(b)}" for a, b in ranges) or "closed"
            lines.append(f"{day.capitalize()}: {spans}")
        return "; ".join(lines)

    def summary_text(self) -> str:
        services = "; ".join(s.describe() for s in self.services)
        closed = ", ".join(d.isoformat() for d in sorted(self.closures))
        out = f"Services: {services}.\nOpening hours: {self.hours_text()}."
        if closed:
            out += f"\nClosed on: {closed}."
        out += f"\nBookings up to {self.horizon_days} days ahead."
        return out


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# -- loading ----------------------------------------------------------------------------


def load_business(path: Path | None) -> Business:
    """Read and validate the business file at `path`, or the packaged example when None."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_BUSINESS_NAME).read_text(encoding="utf-8")
        return parse_business(text, DEFAULT_BUSINESS_NAME)
    return parse_business(files.read_text(path, BusinessError), str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """TOML `text` as a table; a syntax error raises BusinessError naming the line and column."""
    return files.parse_toml(text, source, BusinessError)


def parse_business(text: str, source: str) -> Business:
    """Validate business TOML `text`; `source` (a file name) prefixes every error message."""
    return _Parser(source).business(parse_toml(text, source))


def business_from_data(data: dict[str, Any], source: str) -> Business:
    """Validate an already parsed table (a business file of VOICEBRIDGE_BUSINESSES, its deployment
    keys taken out); `source` prefixes every error message."""
    return _Parser(source).business({"job": "appointments", **data})


_TOP = ("job", "name", "time_zone", "slot_minutes", "horizon_days", "buffer_minutes", "min_notice_minutes",
        "hours", "closures", "services", "languages")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        raise BusinessError(f"{self.source}: {path}: {message}")

    def table(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path or "top level", f"expected a table, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else f" (allowed: {', '.join(allowed)})"
                self.fail(f"{path}.{key}" if path else key, f"unknown key{did}")
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}" if path else key, "missing")
        return value

    def text(self, value: Any, path: str, *, max_len: int = 200) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        if len(value.strip()) > max_len:
            self.fail(path, f"longer than {max_len} characters")
        return value.strip()

    def integer(self, data: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected a whole number, got {_kind(value)}")
        if not lo <= value <= hi:
            self.fail(key, f"{value} is out of range ({lo} to {hi})")
        return value

    def business(self, data: dict[str, Any]) -> Business:
        self.table(data, "", _TOP, ("job", "name", "time_zone", "hours", "services"))
        if data["job"] != "appointments":
            self.fail("job", f'expected "appointments" in an appointments business file, got {data["job"]!r}')
        name = self.text(data["name"], "name", max_len=100)
        tz = self.text(data["time_zone"], "time_zone", max_len=60)
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.fail("time_zone", f"{tz!r} is not a known time zone (an IANA name like \"Europe/London\")")
        slot = self.integer(data, "slot_minutes", 15, 5, 120)
        if 60 % slot and slot % 60:
            self.fail("slot_minutes", f"{slot} does not divide an hour (use 5, 10, 15, 20, 30, 60 or 120)")
        return Business(
            source=self.source, name=name, time_zone=tz, hours=self.hours(data["hours"]),
            closures=self.closures(data.get("closures", [])), services=self.services(data["services"], slot),
            slot_minutes=slot, horizon_days=self.integer(data, "horizon_days", 60, 1, MAX_HORIZON_DAYS),
            buffer_minutes=self.integer(data, "buffer_minutes", 0, 0, 120),
            min_notice_minutes=self.integer(data, "min_notice_minutes", 60, 0, 7 * 24 * 60),
            languages=self.languages(data),
        )

    def languages(self, data: dict[str, Any]) -> tuple[str, ...] | None:
        if "languages" not in data:
            return None
        try:
            return parse_languages(data["languages"], "languages")
        except LanguageError as exc:
            self.fail("languages", str(exc).removeprefix("languages: "))

    def hours(self, value: Any) -> tuple[tuple[tuple[int, int], ...], ...]:
        self.table(value, "hours", WEEKDAYS, WEEKDAYS)
        out = []
        for day in WEEKDAYS:
            path = f"hours.{day}"
            raw = value[day]
            if isinstance(raw, str):
                raw = [] if raw.strip().lower() == "closed" else [raw]
            if not isinstance(raw, list):
                self.fail(path, f'expected a list like ["09:00-12:30", "13:30-18:00"] or "closed", got {_kind(raw)}')
            ranges: list[tuple[int, int]] = []
            for i, span in enumerate(raw):
                where = f"{path}[{i}]"
                if not isinstance(span, str):
                    self.fail(where, f'expected "HH:MM-HH:MM", got {_kind(span)}')
                m = _RANGE.fullmatch(span.strip())
                if m is None:
                    self.fail(where, f'"{span}" is not "HH:MM-HH:MM" (24-hour clock)')
                oh, om, ch, cm = (int(g) for g in m.groups())
                start, end = oh * 60 + om, ch * 60 + cm
                if oh > 23 or om > 59 or cm > 59 or end > 24 * 60:
                    self.fail(where, f'"{span}" is not a time of day (00:00 to 24:00)')
                if end <= start:
                    self.fail(where, f'"{span}" closes before it opens')
                if ranges and start < ranges[-1][1]:
                    self.fail(where, f'"{span}" overlaps or comes before the range before it')
                ranges.append((start, end))
            out.append(tuple(ranges))
        return tuple(out)

    def closures(self, value: Any) -> frozenset[dt.date]:
        if not isinstance(value, list):
            self.fail("closures", f"expected a list of dates (2026-12-25), got {_kind(value)}")
        out = set()
        for i, day in enumerate(value):
            if isinstance(day, str):
                try:
                    day = dt.date.fromisoformat(day.strip())
                except ValueError:
                    self.fail(f"closures[{i}]", f'"{day}" is not a date like 2026-12-25')
            if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
                self.fail(f"closures[{i}]", f"expected a date like 2026-12-25, got {_kind(day)}")
            out.add(day)
        return frozenset(out)

    def services(self, value: Any, slot: int) -> tuple[Service, ...]:
        if not isinstance(value, dict) or not value:
            self.fail("services", "expected at least one [services.ID] table")
        out = []
        for key, raw in value.items():
            path = f"services.{key}"
            if not _ID.fullmatch(key):
                self.fail(path, "ids are lowercase letters and digits joined by - or _ (like beard-trim)")
            raw = self.table(raw, path, ("name", "minutes", "price", "aliases"), ("name", "minutes"))
            minutes = raw["minutes"]
            if isinstance(minutes, bool) or not isinstance(minutes, int) or not 5 <= minutes <= MAX_DURATION_MIN:
                self.fail(f"{path}.minutes", f"expected whole minutes from 5 to {MAX_DURATION_MIN}, got {_kind(minutes)}")
            price = None
            if "price" in raw:
                if not isinstance(raw["price"], str):
                    self.fail(f"{path}.price", f'price {raw["price"]!r} must be a quoted decimal string like "25.00"')
                try:
                    price = parse_amount(raw["price"].strip())
                except ValueError:
                    self.fail(f"{path}.price", f'price "{raw["price"]}" is not a decimal amount like "25.00"')
            aliases = raw.get("aliases", [])
            if not isinstance(aliases, list):
                self.fail(f"{path}.aliases", f"expected a list of strings, got {_kind(aliases)}")
            out.append(Service(key=key, name=self.text(raw["name"], f"{path}.name", max_len=80), minutes=minutes,
                               price_cents=price,
                               aliases=tuple(self.text(a, f"{path}.aliases[{i}]", max_len=80)
                                             for i, a in enumerate(aliases))))
        seen: dict[str, str] = {}
        for s in out:
            for n in (s.key.replace("-", " "), s.name, *s.aliases):
                k = normalize(n)
                if seen.get(k, s.key) != s.key:
                    self.fail(f"services.{s.key}", f"{n!r} also names services.{seen[k]}")
                seen[k] = s.key
        return tuple(out)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
