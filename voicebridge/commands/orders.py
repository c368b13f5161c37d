"""`voicebridge orders [show ID]` and `voicebridge resend ID`: the shop owner's view of orders.

Both read the database at VOICEBRIDGE_DB. Output is plain text; `--json` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import trio

from voicebridge.config import Config
from voicebridge.jobs.pizza.menu import format_money
from voicebridge.ops.outbox import POLL_S
from voicebridge.business import SCHEMAS
from voicebridge.jobs.pizza.records import Delivery, OrderDetail, OrderRow, get_order, list_orders
from voicebridge.ops.store import OutboxRow, Store, StoreError

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1  # no such order, or nothing to resend
EXIT_USAGE = 2  # the database cannot be opened


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `orders` (with `orders show ID`) and `resend` subcommands."""
    orders = subparsers.add_parser(
        "orders",
        help="list recent orders, or show one",
        description="List recent orders with their webhook delivery state; `orders show ID` shows one.",
    )
    orders.add_argument("--limit", type=_positive, default=20, help="how many orders to list (default 20)")
    orders.add_argument("--json", action="store_true", dest="list_json", help="print JSON")
    orders.add_argument("--business", metavar="SLUG", help="only this business's orders (see VOICEBRIDGE_BUSINESSES)")
    orders.set_defaults(func=run_list, show_json=False)
    sub = orders.add_subparsers(dest="orders_command", metavar="show ID")
    show = sub.add_parser("show", help="one order: items, totals, payload, delivery attempts")
    show.add_argument("id", type=_positive, help="order number")
    show.add_argument("--json", action="store_true", dest="show_json", help="print JSON")
    show.set_defaults(func=run_show)

    resend = subparsers.add_parser(
        "resend",
        help="send an order to the webhook again",
        description=(
            "Put an order whose webhook delivery failed back in the queue; the running daemon sends it "
            f"within {POLL_S:g} s. --force also resends one that was delivered."
        ),
    )
    resend.add_argument("id", type=_positive, help="order number")
    resend.add_argument("--force", action="store_true", help="resend even if it was delivered")
    resend.add_argument("--json", action="store_true", help="print JSON")
    resend.set_defaults(func=run_resend)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number from 1 up, got {value}")
    return value


def _with_store(config: Config, command: str, fn: Callable[[Store], Awaitable[T]]) -> T | None:
    """Run `fn(store)` under trio.run; print one error line and return None if the store fails."""
    if isinstance(config.db_path, Path) and not config.db_path.is_file():
        print(f"voicebridge {command}: no database at {config.db_path} (nothing taken or booked yet?)", file=sys.stderr)
        return None

    async def main() -> T:
        store = await Store.open(config.db_path, schemas=SCHEMAS)
        try:
            return await fn(store)
        finally:
            await store.aclose()

    try:
        return trio.run(main)
    except StoreError as exc:
        print(f"voicebridge {command}: {exc}", file=sys.stderr)
        return None


# -- orders -----------------------------------------------------------------------------


def run_list(args: argparse.Namespace, config: Config) -> int:
    """Print recent orders, newest first."""
    rows = _with_store(config, "orders", lambda store: store.read(
        lambda tx: list_orders(tx, args.limit, business=args.business)))
    if rows is None:
        return EXIT_USAGE
    if args.list_json:
        print(json.dumps([_row_json(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("No orders yet.")
        return EXIT_OK
    table = [("#", "Time", "Customer", "Total", "Webhook")]
    several = len({r.business for r in rows}) > 1  # many businesses: say whose each order is
    for r in rows:
        who = f"{r.customer} ({r.fulfillment})" + (f" [{r.business}]" if several else "")
        table.append((str(r.id), _local(r.created_at), who, format_money(r.total_cents), _state(r)))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        cells = [row[0].rjust(widths[0]), *(row[i].ljust(widths[i]) for i in (1, 2)), row[3].rjust(widths[3]), row[4]]
        print("  ".join(cells).rstrip())
    return EXIT_OK


def run_show(args: argparse.Namespace, config: Config) -> int:
    """Print one order in full."""
    found = _with_store(config, "orders show", lambda store: _get(store, args.id))
    if found is None:
        return EXIT_USAGE
    detail = found[0]
    if detail is None:
        print(f"voicebridge orders show: no order #{args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.show_json or getattr(args, "list_json", False):
        print(json.dumps(_detail_json(detail), indent=2))
        return EXIT_OK
    print(f"Order #{detail.id}, {detail.status} {_local(detail.created_at)}")
    where = f"delivery to {detail.address}" if detail.fulfillment == "delivery" else "pickup"
    print(f"Customer: {detail.customer}, {where}" + (f", phone {detail.phone}" if detail.phone else ""))
    if detail.call_sid:
        print(f"Call: {detail.call_sid}")
    print("Items:")
    for i in detail.items:
        what = " ".join(w for w in (f"{i.quantity} x", i.size, i.name) if w)
        if i.toppings:
            what += " + " + ", ".join(i.toppings)
        if i.notes:
            what += f" ({i.notes})"
        print(f"  {i.line}. {what}  {format_money(i.line_cents)}")
    print(f"Subtotal {format_money(detail.subtotal_cents)}")
    print(f"Tax      {format_money(detail.tax_cents)}")
    print(f"Total    {format_money(detail.total_cents)}")
    print("Webhook: " + _delivery_text(detail.id, detail.outbox))
    if detail.outbox is not None:
        print(f"  idempotency key {detail.outbox.idempotency_key}")
        if detail.outbox.last_error and detail.outbox.state != "delivered":
            print(f"  last error: {detail.outbox.last_error}")
    print("Payload:")
    print(json.dumps(detail.payload, indent=2, sort_keys=True))
    return EXIT_OK


async def _get(store: Store, order_id: int) -> tuple[OrderDetail | None]:
    return (await store.read(lambda tx: get_order(tx, order_id)),)


# -- resend -----------------------------------------------------------------------------


def run_resend(args: argparse.Namespace, config: Config) -> int:
    """Put a failed (or, with --force, delivered) delivery back in the queue."""

    async def resend(store: Store) -> tuple[OutboxRow | None, bool, OutboxRow | None]:
        subject = f"order:{args.id}"
        before = await store.outbox_for(subject)
        if before is None:
            return None, False, None
        done = await store.resend(subject, force=args.force)
        return before, done, await store.outbox_for(subject)

    result = _with_store(config, "resend", resend)
    if result is None:
        return EXIT_USAGE
    before, done, after = result
    if before is None:
        print(f"voicebridge resend: no order #{args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        state = after.state if after else None
        print(json.dumps({"order_id": args.id, "resent": done, "state_before": before.state, "state": state}))
    if done:
        if not args.json:
            print(f"Order #{args.id} is queued to be sent again (it was {before.state}).")
        return EXIT_OK
    if before.state == "pending":
        if not args.json:
            print(f"Order #{args.id} is already waiting to be sent.")
        return EXIT_OK
    print(
        f"voicebridge resend: order #{args.id} was already delivered; use --force to send it again",
        file=sys.stderr,
    )
    return EXIT_FAILED


# -- formatting -------------------------------------------------------------------------


def _local(when: datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M")


def _state(r: OrderRow) -> str:
    if r.delivery_state is None:
        return "no delivery"
    if r.delivery_state == "delivered":
        return "delivered"
    tries = f"{r.attempts} {'try' if r.attempts == 1 else 'tries'}"
    if r.delivery_state == "dead":
        return f"FAILED after {tries} ({r.last_error}); run: voicebridge resend {r.id}"
    if r.attempts == 0:
        return "waiting to send"
    return f"retrying ({tries}; last error: {r.last_error})"


def _delivery_text(order_id: int, box: Delivery | None) -> str:
    if box is None:
        return "no delivery row"
    tries = f"{box.attempts} {'attempt' if box.attempts == 1 else 'attempts'}"
    if box.state == "delivered":
        assert box.delivered_at is not None
        return f"delivered {_local(box.delivered_at)} after {tries}"
    if box.state == "dead":
        return f"FAILED after {tries}; run: voicebridge resend {order_id}"
    if box.attempts == 0:
        return "waiting to send"
    nxt = _local(box.next_attempt_at) if box.next_attempt_at else "soon"
    return f"retrying after {tries}, next try {nxt}"


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def _row_json(r: OrderRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "business": r.business,
        "created_at": _iso(r.created_at),
        "call_sid": r.call_sid,
        "status": r.status,
        "customer": r.customer,
        "fulfillment": r.fulfillment,
        "total_cents": r.total_cents,
        "delivery": {"state": r.delivery_state, "attempts": r.attempts, "last_error": r.last_error},
    }


def _detail_json(d: OrderDetail) -> dict[str, Any]:
    box = d.outbox
    return {
        "id": d.id,
        "business": d.business,
        "created_at": _iso(d.created_at),
        "call_sid": d.call_sid,
        "status": d.status,
        "customer": d.customer,
        "fulfillment": d.fulfillment,
        "address": d.address,
        "phone": d.phone,
        "subtotal_cents": d.subtotal_cents,
        "tax_cents": d.tax_cents,
        "total_cents": d.total_cents,
        "items": [
            {
                "line": i.line,
                "item": i.item,
                "name": i.name,
                "size": i.size,
                "quantity": i.quantity,
                "toppings": list(i.toppings),
                "notes": i.notes,
                "unit_cents": i.unit_cents,
                "line_cents": i.line_cents,
            }
            for i in d.items
        ],
        "payload": d.payload,
        "delivery": None
        if box is None
        else {
            "state": box.state,
            "attempts": box.attempts,
            "idempotency_key": box.idempotency_key,
            "next_attempt_at": _iso(box.next_attempt_at),
            "last_error": box.last_error,
            "delivered_at": _iso(box.delivered_at),
        },
    }

