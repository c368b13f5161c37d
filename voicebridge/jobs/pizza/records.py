"""The stored orders, as `voicebridge orders` and the staff page read them.

Pure queries over the store's `Transaction` (run with `await store.read(fn)`): no I/O here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import attrs

from voicebridge.engine.job import Transaction

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, _TS_FORMAT).replace(tzinfo=timezone.utc)


def _req_dt(text: str) -> datetime:
    value = _dt(text)
    assert value is not None
    return value


@attrs.frozen
class Delivery:
    """The webhook delivery of an order (its outbox row)."""

    state: str  # pending | delivered | dead
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    idempotency_key: str
    payload: str


@attrs.frozen
class OrderRow:
    """One line of `voicebridge orders`."""

    id: int
    call_sid: str | None
    created_at: datetime
    status: str
    customer: str
    fulfillment: str
    total_cents: int
    delivery_state: str | None  # the outbox row's state
    attempts: int
    last_error: str | None
    business: str = "default"  # the business (slug) whose number took the order


@attrs.frozen
class OrderItemRow:
    line: int
    item: str
    name: str
    size: str | None
    quantity: int
    toppings: tuple[str, ...]  # display names
    notes: str | None
    unit_cents: int
    line_cents: int


@attrs.frozen
class OrderDetail:
    """Everything stored about one order."""

    id: int
    call_sid: str | None
    created_at: datetime
    status: str
    customer: str
    fulfillment: str
    address: str | None
    phone: str | None
    subtotal_cents: int
    tax_cents: int
    total_cents: int
    items: tuple[OrderItemRow, ...]
    payload: dict[str, Any]
    outbox: Delivery | None
    business: str = "default"


def _delivery(r: dict[str, Any] | None) -> Delivery | None:
    if r is None:
        return None
    return Delivery(state=r["state"], attempts=r["attempts"], last_error=r["last_error"],
                    delivered_at=_dt(r["delivered_at"]), next_attempt_at=_dt(r["next_attempt_at"]),
                    idempotency_key=r["idempotency_key"], payload=r["payload"])


def list_orders(tx: Transaction, limit: int = 20, *, business: str | None = None) -> list[OrderRow]:
    """The most recent orders first (only `business`'s, if given), with their webhook delivery state."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be a whole number from 1 to 10000, got {limit!r}")
    where, params = ("", (limit,)) if business is None else (" WHERE o.business = ?", (business, limit))
    rows = tx.execute(
        "SELECT o.*, x.state, x.attempts, x.last_error FROM orders o"
        " LEFT JOIN outbox x ON x.subject = 'order:' || o.id AND x.target = 'webhook'"
        f"{where} ORDER BY o.id DESC LIMIT ?",
        params,
    )
    return [
        OrderRow(id=r["id"], call_sid=r["call_sid"], created_at=_req_dt(r["created_at"]), status=r["status"],
                 customer=r["customer"], fulfillment=r["fulfillment"], total_cents=r["total_cents"],
                 delivery_state=r["state"], attempts=r["attempts"] or 0, last_error=r["last_error"],
                 business=r["business"])
        for r in rows
    ]


def get_order(tx: Transaction, order_id: int) -> OrderDetail | None:
    """One order with items, payload and webhook delivery; None if there is no such order."""
    if isinstance(order_id, bool) or not isinstance(order_id, int) or order_id < 1:
        raise ValueError(f"order_id must be a positive whole number, got {order_id!r}")
    found = tx.execute("SELECT * FROM orders WHERE id = ?", (order_id,))
    if not found:
        return None
    r = found[0]
    items = tx.execute("SELECT * FROM order_items WHERE order_id = ? ORDER BY line", (order_id,))
    box = tx.execute("SELECT * FROM outbox WHERE subject = ? AND target = 'webhook' ORDER BY id LIMIT 1",
                     (f"order:{order_id}",))
    return OrderDetail(
        id=r["id"], call_sid=r["call_sid"], created_at=_req_dt(r["created_at"]), status=r["status"],
        customer=r["customer"], fulfillment=r["fulfillment"], address=r["address"], phone=r["phone"],
        subtotal_cents=r["subtotal_cents"], tax_cents=r["tax_cents"], total_cents=r["total_cents"],
        items=tuple(
            OrderItemRow(line=i["line"], item=i["item"], name=i["name"], size=i["size"], quantity=i["quantity"],
                         toppings=tuple(json.loads(i["toppings"])), notes=i["notes"], unit_cents=i["unit_cents"],
                         line_cents=i["line_cents"])
            for i in items
        ),
        payload=json.loads(r["payload"]),
        outbox=_delivery(box[0] if box else None),
        business=r["business"],
    )
