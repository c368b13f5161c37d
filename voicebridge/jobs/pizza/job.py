"""The pizza shop as a job of the engine: its words, tools, order, commit and tables."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import attrs

from voicebridge.engine.job import CommitError, Committed, JobPrompts, ToolResult, Transaction
from voicebridge.i18n import ENGLISH, SET_LANGUAGE, Translators, set_language
from voicebridge.jobs.pizza.day import DayBox
from voicebridge.jobs.pizza.menu import Menu
from voicebridge.jobs.pizza.order import FULFILLMENTS, Order, OrderError
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


def stored_time(value: datetime) -> str:
    """A time as the store keeps it: ISO-8601 UTC text."""
    return value.astimezone(timezone.utc).strftime(_TS_FORMAT)


def order_state(order: Order, menu: Menu, tax_rate_bp: int) -> dict[str, Any]:
    """The order as the model is told it after a reconnect (the bridge's record)."""
    lines = [{"line": n, "item": p.line.item, "size": p.line.size, "quantity": p.line.quantity,
              "toppings": list(p.line.toppings)} for n, p in enumerate(order.priced_lines(menu), 1)]
    totals = order.totals(menu, tax_rate_bp)
    return {"lines": lines, "customer": order.customer_name, "fulfillment": order.fulfillment,
            "subtotal_cents": totals.subtotal_cents, "total_cents": totals.total_cents}


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

    @property
    def business_name(self) -> str:
        return self.menu.shop_name

    def instructions(self, now: datetime) -> str:
        text = session_instructions(self.menu.shop_name, self.menu.summary_text())
        language = self.translators.instructions()
        if language:
            text = f"{text}\n\n{language}"
        note = self.day.current.note_for_model(self.menu)
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
        if day.closed and name in ("add_item", "update_item", "confirm_order"):
            return ToolResult(output={"ok": False, "error": day.closed_text(tr)}, ok=False, intent=None, changed=False)
        before = list(task.lines)
        result = execute_tool(task, self.menu, name, arguments, tax_rate_bp=self.tax_rate_bp, tr=tr)
        if result.changed and name in ("add_item", "update_item"):
            for line in task.lines:
                why = None if any(line is b for b in before) else day.refusal(self.menu, line.item, line.size, tr)
                if why is not None:  # sold out: the order stays as it was, the model says why
                    task.lines[:] = before
                    return ToolResult(output={"ok": False, "error": why}, ok=False, intent=None, changed=False)
        return result

    def state_for_model(self, task: Order) -> dict[str, Any]:
        return order_state(task, self.menu, self.tax_rate_bp)

    def commit(self, tx: Transaction, call_sid: str | None, task: Order, now: datetime) -> Committed:
        """The order, its items and its `order.created` webhook delivery, in the caller's transaction.

        The webhook body (with `order_id`) is built here and stored as the exact body every
        delivery attempt sends.
        """
        order = task
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
