"""The function tools of the appointments job, and their execution.

Every argument is checked server-side: the service against the business's list; the day and
time against the business's local "now", opening hours, closures, notice and horizon; the slot
against the stored bookings and the external calendar's busy times loaded for that day. A bad
argument answers `ok=False` with an `error` the model can say back, and changes nothing.
`book_appointment`, `move_appointment` and `cancel_appointment` put the request together and
answer the read-back (intent "review"); nothing is written before `confirm_booking` and the
commit that follows it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable

from voicebridge.engine.job import ToolResult
from voicebridge.jobs.appointments import slots
from voicebridge.jobs.appointments.booking import BookingRequest, Lookup, StoredBooking
from voicebridge.jobs.appointments.business import Business, Service
from voicebridge.jobs.appointments.words import parse_day, parse_time, say_day, say_time, say_when
from voicebridge.jobs.pizza.menu import format_money, join_words
from voicebridge.i18n import ENGLISH, Translator

MAX_NAME = 80
MAX_REASON = 200
MAX_RANGE_DAYS = 7
READ_EXACTLY = ("Read read_back to the caller exactly as written, then wait. Call confirm_booking only after a "
                "clear yes (or the caller pressing 1); call reject_booking if they want a change.")
NOT_LOADED = "The calendar for that day could not be loaded; call the tool again."


class BadArgument(Exception):
    """A tool argument is invalid; the message is said back to the caller by the model."""


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False}}


def tool_definitions(business: Business) -> list[dict[str, Any]]:
    services = join_words([s.name for s in business.services], "or")
    service = {"type": "string", "description": f"The service: {services}."}
    date = {"type": "string", "description": "The day: YYYY-MM-DD, or today, tomorrow, or a weekday name."}
    time = {"type": "string", "description": "Start time, HH:MM on the 24-hour clock (or '2 pm')."}
    booking = {"type": "integer", "description": "The booking number, as find_my_bookings gave it."}
    reason = {"type": "string", "description": "Short reason, for the records."}
    return [
        _tool("check_availability", "Free start times for a service on a day, or on each day of a range "
              f"(at most {MAX_RANGE_DAYS} days).",
              {"service": service, "date": date, "to_date": {**date, "description": "Last day of a range."}},
              ["service", "date"]),
        _tool("book_appointment", "Put a new booking together and get its read-back. Needs the caller's name.",
              {"service": service, "date": date, "time": time,
               "name": {"type": "string", "description": "The caller's name for the booking."}},
              ["service", "date", "time", "name"]),
        _tool("find_my_bookings", "The caller's upcoming bookings: by the number they call from, or by the "
              "name they give. Bookings found by name must be confirmed by the caller (confirmed=true) "
              "before they can be moved or cancelled.",
              {"name": {"type": "string", "description": "The name the bookings are under."},
               "confirmed": {"type": "boolean", "description": "The caller said the bookings read out are theirs."}},
              []),
        _tool("move_appointment", "Move one of the caller's bookings to another day or time; get the read-back.",
              {"booking": booking, "date": date, "time": time}, ["date", "time"]),
        _tool("cancel_appointment", "Cancel one of the caller's bookings; get the read-back.",
              {"booking": booking}, []),
        _tool("confirm_booking", "The caller said yes to the read-back: do it. Only after a read-back.", {}, []),
        _tool("reject_booking", "The caller said no to the read-back and wants a change.", {"reason": reason}, []),
        _tool("transfer_to_human", "The caller asks for a person, or you cannot help.", {"reason": reason}, []),
        _tool("end_call", "Hang up, after saying goodbye.", {"reason": reason}, []),
    ]


# -- what a tool needs looked up before it runs -------------------------------------------


def lookup_for(business: Business, task: BookingRequest, name: str, arguments: str, now: dt.datetime) -> Lookup | None:
    """The days, number and name tool `name` needs loaded, or None when it needs nothing (or its
    arguments are bad: the tool itself then says what is wrong)."""
    if name not in ("check_availability", "book_appointment", "move_appointment", "find_my_bookings",
                    "cancel_appointment"):
        return None
    try:
        raw = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    today = slots.local_today(business, now)
    window = None
    try:
        if isinstance(raw.get("date"), str):
            first = parse_day(raw["date"], today)
            last = parse_day(raw["to_date"], today) if isinstance(raw.get("to_date"), str) else first
            if first <= last <= first + dt.timedelta(days=MAX_RANGE_DAYS):
                # the nearest free slots of a refusal are looked for in the days after
                window = slots.day_window(business, first, last + dt.timedelta(days=slots.SEARCH_DAYS))
    except ValueError:
        window = None
    who = raw.get("name") if name == "find_my_bookings" and isinstance(raw.get("name"), str) else None
    return Lookup(window=window, phone=task.caller_number, name=" ".join(who.split())[:MAX_NAME] if who else None)


# -- execution --------------------------------------------------------------------------


def execute_tool(task: BookingRequest, business: Business, name: str, arguments: str, now: dt.datetime,
                 tr: Translator = ENGLISH.default) -> ToolResult:
    handler = _HANDLERS.get(name)
    if handler is None:
        return _error(f"There is no tool named {name!r}.")
    try:
        raw = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return _error("The tool arguments were not valid JSON; call the tool again with a JSON object.")
    if not isinstance(raw, dict):
        return _error("The tool arguments must be a JSON object.")
    try:
        return handler(_Call(task, business, _Args(name, raw), now, tr))
    except BadArgument as exc:
        return _error(str(exc))


def _error(message: str) -> ToolResult:
    return ToolResult(output={"ok": False, "error": message}, ok=False, intent=None, changed=False)


def _done(output: dict[str, Any], *, intent: str | None = None, changed: bool = False) -> ToolResult:
    return ToolResult(output={"ok": True, **output}, ok=True, intent=intent, changed=changed)


class _Args:
    def __init__(self, tool: str, raw: dict[str, Any]) -> None:
        self.tool = tool
        self.raw = raw

    def only(self, *names: str) -> None:
        for key in self.raw:
            if key not in names:
                raise BadArgument(f"{self.tool} has no argument {key!r} (it takes {', '.join(names) or 'none'}).")

    def text(self, name: str, *, max_len: int = 100, required: bool = False) -> str | None:
        value = self.raw.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise BadArgument(f"{self.tool} needs {name}.")
            return None
        if not isinstance(value, str):
            raise BadArgument(f"{name} must be text.")
        value = " ".join(value.split())
        if len(value) > max_len:
            raise BadArgument(f"{name} is too long; keep it under {max_len} characters.")
        return value

    def integer(self, name: str) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise BadArgument(f"{name} must be a whole number.")
        return int(value)


class _Call:
    """One tool call: the task, the business, the arguments and the business's local now."""

    def __init__(self, task: BookingRequest, business: Business, args: _Args, now: dt.datetime,
                 tr: Translator = ENGLISH.default) -> None:
        self.tr = tr  # the call's language: the read-backs and day notes the caller hears
        self.task = task
        self.business = business
        self.args = args
        self.now = now
        self.today = slots.local_today(business, now)

    def service(self, required: bool = True) -> Service:
        text = self.args.text("service", required=required)
        assert text is not None
        found = self.business.find_service(text)
        if found is None:
            names = join_words([s.name for s in self.business.services], "or")
            raise BadArgument(f"We don't offer {text}. We do {names}.")
        return found

    def day(self, name: str = "date") -> dt.date:
        text = self.args.text(name, max_len=40, required=True)
        assert text is not None
        try:
            return parse_day(text, self.today)
        except ValueError as exc:
            raise BadArgument(str(exc)) from None

    def start(self, day: dt.date) -> dt.datetime:
        text = self.args.text("time", max_len=40, required=True)
        assert text is not None
        try:
            at = parse_time(text)
        except ValueError as exc:
            raise BadArgument(str(exc)) from None
        start = slots.local_start(self.business, day, at)
        if start is None:
            raise BadArgument(f"{say_time(at)} does not exist on {say_day(day, self.today)} (the clocks change).")
        return start

    def loaded(self, first: dt.date, last: dt.date) -> None:
        window = self.task.found.window
        want = slots.day_window(self.business, first, last)
        if window is None or not (window[0] <= want[0] and want[1] <= window[1]):
            raise BadArgument(NOT_LOADED)
        if self.task.found.calendar_error is not None:
            raise BadArgument("The calendar cannot be checked right now. Apologise, and offer to connect the "
                              "caller with a person or to call back later.")

    def check(self, service: Service, start: dt.datetime, exclude: int | None = None) -> None:
        busy = self.task.busy(exclude)
        why = slots.refusal(self.business, service, start, busy, self.now)
        if why is None:
            return
        nearest = slots.nearest_free(self.business, service, start, busy, self.now)
        offer = (self.tr(" The nearest free times are {times}.",
                         times=self.tr.join([say_when(s, self.today, self.tr) for s in nearest], "or"))
                 if nearest else "")
        raise BadArgument(why + offer)

    def booking(self) -> StoredBooking:
        number = self.args.integer("booking")
        mine = self.task.mine
        if not mine:
            raise BadArgument("I have no bookings for this caller yet: call find_my_bookings first.")
        if number is None:
            if len(mine) > 1:
                raise BadArgument("The caller has several bookings; which one (booking number)?")
            return next(iter(mine.values()))
        if number not in mine:
            raise BadArgument(f"Booking {number} is not one of the caller's bookings ({join_words([str(n) for n in sorted(mine)])}).")
        return mine[number]


def describe(business: Business, b: StoredBooking, today: dt.date) -> str:
    return f"a {b.service_name} on {say_when(b.start.astimezone(business.tz), today)}"


def _spans(business: Business, starts: list[dt.datetime]) -> list[str]:
    """Free start times as runs: "9 am to 11:45 am", "1:30 pm"."""
    runs: list[list[dt.datetime]] = []
    step = dt.timedelta(minutes=business.slot_minutes)
    for s in starts:
        if runs and s - runs[-1][-1] == step:
            runs[-1].append(s)
        else:
            runs.append([s])
    return [say_time(r[0]) if len(r) == 1 else f"{say_time(r[0])} to {say_time(r[-1])}" for r in runs]


def _check_availability(c: _Call) -> ToolResult:
    c.args.only("service", "date", "to_date")
    service = c.service()
    first = c.day()
    last = c.day("to_date") if c.args.raw.get("to_date") else first
    if last < first:
        raise BadArgument("to_date is before date.")
    if last > first + dt.timedelta(days=MAX_RANGE_DAYS):
        raise BadArgument(f"Ask about at most {MAX_RANGE_DAYS} days at a time.")
    c.loaded(first, last)
    days = []
    day = first
    while day <= last:
        starts = slots.free_starts(c.business, service, day, c.task.busy(), c.now)
        entry: dict[str, Any] = {"day": say_day(day, c.today), "date": day.isoformat()}
        if starts:
            entry["free_start_times"] = _spans(c.business, starts)
        else:
            entry["free_start_times"] = []
            entry["note"] = _day_note(c, day)
        days.append(entry)
        day += dt.timedelta(days=1)
    price = f", {format_money(service.price_cents)}" if service.price_cents is not None else ""
    return _done({"service": f"{service.name} ({service.minutes} minutes{price})",
                  "every_minutes": c.business.slot_minutes, "days": days})


def _day_note(c: _Call, day: dt.date) -> str:
    """Why a day has no free start time."""
    b = c.business
    tr = c.tr
    if day in b.closures:
        return tr("We are closed on {day}.", day=say_day(day, c.today, tr))
    if not b.hours[day.weekday()]:
        if tr.english:
            return f"We are closed on {say_day(day, c.today).split(' the ')[0]}s."
        return tr("We are closed on {weekday}.", weekday=tr.weekday(day))
    if day < c.today:
        return tr("{day} is in the past.", day=say_day(day, c.today, tr))
    if day > c.today + dt.timedelta(days=b.horizon_days):
        return tr("We only book up to {days} days ahead.", days=b.horizon_days)
    return tr("Nothing is free that day.")


def _book(c: _Call) -> ToolResult:
    c.args.only("service", "date", "time", "name")
    service = c.service()
    day = c.day()
    start = c.start(day)
    name = c.args.text("name", max_len=MAX_NAME, required=True)
    c.loaded(day, day)
    c.check(service, start)
    t = c.task
    t.action, t.service, t.start, t.customer, t.booking_id = "book", service.key, start, name, None
    tr = c.tr
    price = tr(" It costs {price}.", price=tr.money(service.price_cents)) if service.price_cents is not None else ""
    read_back = tr("Here is what I have: a {service} on {when}, for {name}.{price} Shall I book it?",
                   service=service.name, when=say_when(start, c.today, tr), name=name, price=price)
    return _done({"read_back": read_back, "instruction": READ_EXACTLY}, intent="review", changed=True)


def _find(c: _Call) -> ToolResult:
    c.args.only("name", "confirmed")
    name = c.args.text("name", max_len=MAX_NAME)
    confirmed = c.args.raw.get("confirmed") is True
    t = c.task
    if confirmed:
        if not t.candidates:
            raise BadArgument("Nothing to confirm: call find_my_bookings with the caller's name first.")
        t.mine.update(t.candidates)
        t.candidates.clear()
        return _done({"bookings": _listing(c, t.mine.values())})
    t.mine.update({b.id: b for b in t.found.mine})
    if name is not None:
        by_name = [b for b in t.found.by_name if b.id not in t.mine]
        if by_name:
            t.candidates = {b.id: b for b in by_name}
            return _done({"found_under_name": _listing(c, by_name),
                          "instruction": "Read these out and ask the caller whether they are theirs; if yes, call "
                                         "find_my_bookings with confirmed=true."})
    if not t.mine:
        how = f"under the name {name}" if name else "for the number you are calling from"
        more = "" if name else " Ask for the name the booking is under."
        return _done({"bookings": [], "message": f"There are no upcoming bookings {how}.{more}"})
    return _done({"bookings": _listing(c, t.mine.values())})


def _listing(c: _Call, bookings: Any) -> list[dict[str, Any]]:
    return [{"booking": b.id, "what": describe(c.business, b, c.today)}
            for b in sorted(bookings, key=lambda b: b.start)]


def _move(c: _Call) -> ToolResult:
    c.args.only("booking", "date", "time")
    booking = c.booking()
    day = c.day()
    start = c.start(day)
    try:
        service = c.business.service(booking.service)
    except KeyError:
        raise BadArgument(f"We no longer offer {booking.service_name}; it can be cancelled, not moved.") from None
    c.loaded(day, day)
    c.check(service, start, exclude=booking.id)
    t = c.task
    t.action, t.service, t.start, t.customer, t.booking_id = "move", service.key, start, booking.customer, booking.id
    read_back = c.tr("Here is what I have: your {service} on {when} moves to {new_when}. Shall I move it?",
                     service=booking.service_name, when=say_when(booking.start.astimezone(c.business.tz), c.today, c.tr),
                     new_when=say_when(start, c.today, c.tr))
    return _done({"read_back": read_back, "instruction": READ_EXACTLY}, intent="review", changed=True)


def _cancel(c: _Call) -> ToolResult:
    c.args.only("booking")
    booking = c.booking()
    t = c.task
    local = booking.start.astimezone(c.business.tz)
    if booking.start <= c.now:
        raise BadArgument("That appointment has already started; it cannot be cancelled now.")
    t.action, t.service, t.start, t.customer, t.booking_id = "cancel", booking.service, local, booking.customer, booking.id
    read_back = c.tr("Here is what I have: cancel your {service} on {when}. Shall I cancel it?",
                     service=booking.service_name, when=say_when(local, c.today, c.tr))
    return _done({"read_back": read_back, "instruction": READ_EXACTLY}, intent="review", changed=True)


def _confirm(c: _Call) -> ToolResult:
    c.args.only()
    if c.task.action is None:
        raise BadArgument("There is nothing to confirm yet: book, move or cancel first, and read it back.")
    return _done({"message": "Confirmation requested; wait for the result before telling the caller."},
                 intent="confirm")


def _reason_tool(intent: str, message: str) -> Callable[[_Call], ToolResult]:
    def run(c: _Call) -> ToolResult:
        c.args.only("reason")
        reason = c.args.text("reason", max_len=MAX_REASON)
        return _done({"message": message, **({"reason": reason} if reason else {})}, intent=intent)

    return run


_HANDLERS: dict[str, Callable[[_Call], ToolResult]] = {
    "check_availability": _check_availability,
    "book_appointment": _book,
    "find_my_bookings": _find,
    "move_appointment": _move,
    "cancel_appointment": _cancel,
    "confirm_booking": _confirm,
    "reject_booking": _reason_tool("reject", "Ask the caller what they would like to change."),
    "transfer_to_human": _reason_tool("transfer", "Tell the caller you are connecting them to a person now."),
    "end_call": _reason_tool("end_call", "Say a short goodbye; the call will end."),
}
