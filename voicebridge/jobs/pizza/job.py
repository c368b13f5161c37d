"""The pizza shop as a job of the engine: its words, tools, order, commit and tables."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

import attrs

from voicebridge.engine.job import CommitError, Committed, JobPrompts, ToolResult, Transaction
from voicebridge.i18n import ENGLISH, SET_LANGUAGE, Translator, Translators, set_language
from voicebridge.jobs.pizza.day import DayBox
from voicebridge.jobs.pizza.menu import Menu
from voicebridge.jobs.pizza.order import FULFILLMENTS, Order, OrderError
from voicebridge.jobs.hours import is_open, next_opening, say_opening, wall_instant
from voicebridge.jobs.pizza import prompts as words
from voicebridge.jobs.pizza.prompts import PROMPTS, session_instructions
from voicebridge.jobs.pizza.tools import execute_tool, tool_definitions

# The orders tables. On databases made before jobs existed, the engine's first migration made
# them (with these same definitions), hence IF NOT EXISTS.
SCHEMA: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS orders (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            call_sid TEXT,
            created_at TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'confirmed',
            customer TEXT NOT NULL,
            fulfillment TEXT NOT NULL CHECK (fulfillment IN ('pickup', 'delivery')),
            address TEXT,
            phone TEXT,
            subtotal_cents INTEGER NOT NULL CHECK (subtotal_cents >= 0),
            tax_cents INTEGER NOT NULL CHECK (tax_cents >= 0),
            total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
            payload TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS orders_by_call ON orders (call_sid)",
        """CREATE TABLE IF NOT EXISTS order_items (
            id INTEGER PRIMARY KEY,
            order_id INTEGER NOT NULL REFERENCES orders (id),
            line INTEGER NOT NULL,
            item TEXT NOT NULL,
            name TEXT NOT NULL,
            size TEXT,
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            toppings TEXT NOT NULL,
            notes TEXT,
            unit_cents INTEGER NOT NULL,
            line_cents INTEGER NOT NULL,
            UNIQUE (order_id, line)
        )""",
    ),
    # The kitchen board: an order moves confirmed (new) -> preparing -> ready -> completed, or is
    # cancelled with a reason; status_at is when it last moved.
    (
        "ALTER TABLE orders ADD COLUMN status_reason TEXT",
        "ALTER TABLE orders ADD COLUMN status_at TEXT",
        "CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status)",
    ),
    # 3: many businesses in one database: each order belongs to the business whose number was called
    # (the engine's migration 4 adds `orders.business`; this lists a business's orders fast).
    ("CREATE INDEX IF NOT EXISTS orders_by_business ON orders (business, id)",),
)

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
AHEAD_DAYS = 7  # how far ahead an order may be wanted


def _refused(why: str) -> ToolResult:
    """A tool refused with words the model can say; the order is unchanged."""
    return ToolResult(output={"ok": False, "error": why}, ok=False, intent=None, changed=False)


def stored_time(value: datetime) -> str:
    """A time as the store keeps it: ISO-8601 UTC text."""
    return value.astimezone(timezone.utc).strftime(_TS_FORMAT)


def order_state(order: Order, menu: Menu, tax_rate_bp: int) -> dict[str, Any]:
    """The order as the model is told it after a reconnect (the bridge's record)."""
    lines = [{"line": n, "item": p.line.item, "size": p.line.size, "quantity": p.line.quantity,
              "toppings": list(p.line.toppings)} for n, p in enumerate(order.priced_lines(menu), 1)]
    totals = order.totals(menu, tax_rate_bp)
    state = {"lines": lines, "customer": order.customer_name, "fulfillment": order.fulfillment,
             "subtotal_cents": totals.subtotal_cents, "total_cents": totals.total_cents}
    if order.wanted_words:  # only for an order wanted later: an as-soon-as-possible one reads as before
        state["wanted"] = order.wanted_words
    return state


@attrs.frozen
class PizzaJob:
    """Take a pizza order: build it with the menu's tools, read it back with the total, commit on a yes."""

    menu: Menu
    tax_rate_bp: int = 800
    name: str = "pizza"
    base_prompts: JobPrompts = PROMPTS
    schema: tuple[tuple[str, ...], ...] = SCHEMA
    # What is sold out and whether the shop is closed now: a snapshot the daemon replaces.
    day: DayBox = attrs.field(factory=DayBox, eq=False)
    # The menu's languages with their catalogs, loaded by the composition point (business.py).
    translators: Translators = attrs.field(default=ENGLISH, eq=False)

    @property
    def languages(self) -> tuple[str, ...]:
        return self.translators.languages

    @property
    def prompts(self) -> JobPrompts:
        """The fixed prompts; while staff have closed the shop, the greeting says so at once."""
        day = self.day.current
        if not day.closed:
            return self.base_prompts
        return attrs.evolve(self.base_prompts, greeting=(
            f"Greet the caller and tell them: {day.closed_text()} Offer a transfer to the shop if they want "
            "a person."))

    def prompts_at(self, now: datetime) -> JobPrompts:
        """The fixed prompts for a call starting at `now`: outside the opening hours the greeting
        says the shop is closed, when it opens again and what the caller is offered."""
        closed = self.closed_by_hours(now)
        if closed is None:
            return self.prompts
        return attrs.evolve(self.base_prompts,
                            greeting=words.closed_greeting(closed, words.closed_offer(self.menu.when_closed)))

    def closed_by_hours(self, now: datetime, tr: Translator = ENGLISH.default) -> str | None:
        """Why no order can be taken at `now` by the menu's hours (words to say), or None when open.

        Staff's "closed now" is the day's own refusal (Availability.closed_text); this is the hours'."""
        opening = self.menu.opening
        if opening is None or self.day.current.closed or is_open(opening, now):
            return None
        nxt = self.next_opening_words(now, tr=tr)
        if self.menu.when_closed == "order_ahead":
            return words.closed_for_now(nxt, tr)
        return words.closed_by_hours(nxt, tr)

    def next_opening_words(self, now: datetime, after: datetime | None = None,
                           tr: Translator = ENGLISH.default) -> str | None:
        """When the shop next opens after `after` (default `now`), said from `now`: "tomorrow at 11 am"."""
        opening = self.menu.opening
        assert opening is not None
        nxt = next_opening(opening, after or now)
        return None if nxt is None else say_opening(nxt, now, opening.tz, tr)

    def refusal(self, task: Order, name: str, now: datetime, tr: Translator = ENGLISH.default) -> str | None:
        """Why tool `name` (or, for "confirm_order", the commit) cannot go ahead at `now`; None if it can.

        Staff's "closed now" refuses every order. Outside the hours a shop that takes orders ahead
        builds the order and confirms it only for a time inside the hours; other shops refuse."""
        day = self.day.current
        if day.closed:
            return day.closed_text(tr)
        closed = self.closed_by_hours(now, tr)
        if closed is not None and self.menu.when_closed != "order_ahead":
            return closed
        if name != "confirm_order":
            return None
        if task.wanted_at is None:
            return None if closed is None else words.closed_needs_time(self.next_opening_words(now, tr=tr), tr)
        return self.wanted_refusal(task.wanted_at, task.wanted_words or "then", now, tr)

    def wanted_refusal(self, wanted: datetime, when: str, now: datetime,
                       tr: Translator = ENGLISH.default) -> str | None:
        """Why the order cannot be for `wanted` (past, too far ahead, outside the hours); None if it can."""
        opening = self.menu.opening
        assert opening is not None
        if wanted <= now:
            return words.time_in_the_past(when, tr)
        if (wanted.astimezone(opening.tz).date() - now.astimezone(opening.tz).date()).days > AHEAD_DAYS:
            return words.time_too_far(AHEAD_DAYS, tr)
        if not is_open(opening, wanted):
            return words.time_outside_hours(when, self.next_opening_words(now, wanted, tr), tr)
        return None

    def set_pickup_time(self, task: Order, arguments: str, now: datetime,
                        tr: Translator = ENGLISH.default) -> ToolResult:
        """set_pickup_time: "asap", or a local "HH:MM" (today if still ahead, else tomorrow, or on "date")."""
        opening = self.menu.opening
        assert opening is not None
        try:
            raw = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raw = None
        if not isinstance(raw, dict) or set(raw) - {"time", "date"} or not isinstance(raw.get("time"), str):
            return _refused(words.time_arguments())
        text = raw["time"].strip()
        if text.lower() in ("asap", "as soon as possible", "now"):
            changed = task.wanted_at is not None
            task.wanted_at = task.wanted_words = None
            return ToolResult(output={"ok": True, "time": "asap"}, ok=True, intent=None, changed=changed)
        m = _CLOCK.fullmatch(text)
        if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            return _refused(words.time_not_understood(text))
        minutes = int(m.group(1)) * 60 + int(m.group(2))
        tz = opening.tz
        today = now.astimezone(tz).date()
        if raw.get("date") is not None:
            try:
                day = date.fromisoformat(str(raw["date"]))
            except ValueError:
                return _refused(words.date_not_understood(str(raw["date"])))
        else:
            day = today if wall_instant(today, minutes, tz) > now else today + timedelta(days=1)
        wanted = wall_instant(day, minutes, tz).astimezone(tz)
        when = say_opening(wanted, now, tz, tr)
        why = self.wanted_refusal(wanted, when, now, tr)
        if why is not None:
            return _refused(why)
        changed = task.wanted_at != wanted
        task.wanted_at, task.wanted_words = wanted, when
        return ToolResult(output={"ok": True, "time": when}, ok=True, intent=None, changed=changed)

    @property
    def business_name(self) -> str:
        return self.menu.shop_name

    def instructions(self, now: datetime) -> str:
        text = session_instructions(self.menu.shop_name, self.menu.summary_text())
        language = self.translators.instructions()
        if language:
            text = f"{text}\n\n{language}"
        note = self.day.current.note_for_model(self.menu)
        closed = self.closed_by_hours(now)
        if closed is not None:
            note = f"{closed} {words.closed_offer(self.menu.when_closed)} {note}".rstrip()
        return f"{text}\n\nToday: {note}" if note else text

    def tool_definitions(self) -> list[dict[str, Any]]:
        tools = tool_definitions(self.menu)
        return [*tools, self.translators.language_tool()] if self.translators.several else tools

    def new_task(self, caller_number: str | None) -> Order:
        return Order.empty(caller_number=caller_number)

    def run_tool(self, task: Order, name: str, arguments: str, now: datetime) -> ToolResult:
        if name == SET_LANGUAGE and self.translators.several:
            return set_language(self.translators, task, arguments)
        day = self.day.current
        tr = self.translators.get(task.language)
        if name == "set_pickup_time" and self.menu.opening is not None:
            return self.set_pickup_time(task, arguments, now, tr)
        if name in ("add_item", "update_item", "confirm_order"):
            why = self.refusal(task, name, now, tr)
            if why is not None:
                return _refused(why)
        before = list(task.lines)
        result = execute_tool(task, self.menu, name, arguments, tax_rate_bp=self.tax_rate_bp, tr=tr)
        if result.changed and name in ("add_item", "update_item"):
            for line in task.lines:
                why = None if any(line is b for b in before) else day.refusal(self.menu, line.item, line.size, tr)
                if why is not None:  # sold out: the order stays as it was, the model says why
                    task.lines[:] = before
                    return _refused(why)
        return result

    def state_for_model(self, task: Order) -> dict[str, Any]:
        return order_state(task, self.menu, self.tax_rate_bp)

    def commit(self, tx: Transaction, call_sid: str | None, task: Order, now: datetime) -> Committed:
        """The order, its items and its `order.created` webhook delivery, in the caller's transaction.

        The webhook body (with `order_id`) is built here and stored as the exact body every
        delivery attempt sends.
        """
        order = task
        why = self.refusal(order, "confirm_order", now, self.translators.get(order.language))
        if why is not None:  # keypad 1 reaches here without confirm_order's check
            raise CommitError(why)
        missing = order.missing()
        if missing:
            raise CommitError(f"the order is not complete: missing {', '.join(missing)}")
        assert order.fulfillment in FULFILLMENTS and order.customer_name
        try:
            payload = order.to_json(self.menu, self.tax_rate_bp, call_sid=call_sid, created_at=now)
        except (OrderError, ValueError) as exc:
            raise CommitError(f"the order does not match the menu: {exc}") from None
        order_id = tx.insert(
            "INSERT INTO orders (call_sid, created_at, status, customer, fulfillment, address, phone,"
            " subtotal_cents, tax_cents, total_cents, payload, business)"
            " VALUES (?, ?, 'confirmed', ?, ?, ?, ?, ?, ?, ?, '', ?)",
            (call_sid, stored_time(now), order.customer_name, order.fulfillment, payload["delivery_address"],
             order.phone, payload["subtotal_cents"], payload["tax_cents"], payload["total_cents"], tx.business),
        )
        body = {**payload, "order_id": order_id}
        tx.execute("UPDATE orders SET payload = ? WHERE id = ?",
                   (json.dumps(body, sort_keys=True, separators=(",", ":")), order_id))
        for it in payload["items"]:
            tx.execute(
                "INSERT INTO order_items (order_id, line, item, name, size, quantity, toppings, notes,"
                " unit_cents, line_cents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order_id, it["line"], it["item"], it["name"], it["size"], it["quantity"],
                 json.dumps([t["name"] for t in it["toppings"]]), it["notes"], it["unit_price_cents"],
                 it["line_total_cents"]),
            )
        tx.enqueue("order.created", f"order:{order_id}", body)
        return Committed(order_id, {"order_id": order_id, "subtotal_cents": payload["subtotal_cents"],
                                    "tax_cents": payload["tax_cents"], "total_cents": payload["total_cents"]})
