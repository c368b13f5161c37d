"""`voicebridge orders`, `orders show ID` and `resend ID` against a real database (voicebridge.commands.orders)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trio

from voicebridge.commands.orders import register
from voicebridge.config import Config
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.ops.store import OutboxRow, Store
from pizza_records import outbox_for_order, save_order

MENU = load_menu(None)
T0 = datetime(2025, 5, 2, 18, 0, tzinfo=timezone.utc)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicebridge")
    register(p.add_subparsers(dest="command", required=True))
    return p


def run(config: Config, *argv: str) -> int:
    """Parse `argv` as the CLI would and run the command."""
    args = parser().parse_args(list(argv))
    return int(args.func(args, config))


def make_order(name: str, fulfillment: str = "pickup", address: str | None = None) -> Order:
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("pepperoni", "large", 1, ("mushrooms",), "well done"), OrderLine("soda", None, 2)]
    order.customer_name = name
    order.fulfillment = fulfillment
    order.address = address
    return order


@pytest.fixture
def config(db_target: Path | str) -> Config:
    """A config whose database (SQLite, or PostgreSQL) holds three orders: delivered (#1), dead (#2)
    and pending (#3)."""
    path = db_target

    async def fill() -> None:
        store = await Store.open(path)
        try:
            a = await save_order(store, "CA1", make_order("Sam"), T0)
            b = await save_order(store, "CA2", make_order("Robin", "delivery", "12 Oak Street"), T0)
            await save_order(store, "CA3", make_order("Kim"), T0)
            for order_id in (a, b):
                row = await outbox_for_order(store, order_id)
                assert row is not None
                if order_id == a:
                    await store.mark_delivered(row.id, delivered_at=T0)
                else:
                    await store.mark_retry(row.id, next_attempt_at=T0, error="HTTP 500")
                    await store.mark_dead(row.id, error="HTTP 503")
        finally:
            await store.aclose()

    trio.run(fill)
    return Config(db_path=path)


def outbox(config: Config, order_id: int) -> OutboxRow:
    async def get() -> OutboxRow | None:
        store = await Store.open(config.db_path)
        try:
            return await outbox_for_order(store, order_id)
        finally:
            await store.aclose()

    row = trio.run(get)
    assert row is not None
    return row


def test_orders_lists_newest_first_with_delivery_state(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """The list shows id, customer, total and what happened to the webhook delivery."""
    assert run(config, "orders") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "Time", "Customer", "Total", "Webhook"]
    body = [line.split(None, 1)[0] for line in lines[1:]]
    assert body == ["3", "2", "1"]
    assert "Kim (pickup)" in lines[1] and "$24.84" in lines[1] and lines[1].endswith("waiting to send")
    assert "Robin (delivery)" in lines[2]
    assert lines[2].endswith("FAILED after 2 tries (HTTP 503); run: voicebridge resend 2")
    assert lines[3].endswith("delivered")


def test_orders_json_is_machine_readable(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints a list of orders with cents and delivery details."""
    assert run(config, "orders", "--json", "--limit", "2") == 0
    data = json.loads(capsys.readouterr().out)
    assert [o["id"] for o in data] == [3, 2]
    assert data[1]["delivery"] == {"state": "dead", "attempts": 2, "last_error": "HTTP 503"}
    assert data[1]["total_cents"] == 2484 and data[1]["created_at"] == "2025-05-02T18:00:00Z"


def test_orders_show_prints_items_totals_delivery_and_payload(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """show ID gives the items, the money, the delivery attempts and error, and the payload."""
    assert run(config, "orders", "show", "2") == 0
    out = capsys.readouterr().out
    assert "Order #2, confirmed" in out
    assert "Customer: Robin, delivery to 12 Oak Street, phone +15550100111" in out
    assert "  1. 1 x large pepperoni pizza + mushrooms (well done)  $18.00" in out
    assert "  2. 2 x soda  $5.00" in out
    assert "Subtotal $23.00" in out and "Tax      $1.84" in out and "Total    $24.84" in out
    assert "Webhook: FAILED after 2 attempts; run: voicebridge resend 2" in out
    assert "last error: HTTP 503" in out
    payload = json.loads(out[out.index("Payload:\n") + len("Payload:\n") :])
    assert payload["order_id"] == 2 and payload["delivery_address"] == "12 Oak Street"


def test_orders_show_json(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """show ID --json gives the order, items, payload and delivery as JSON."""
    assert run(config, "orders", "show", "1", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == 1 and data["customer"] == "Sam"
    assert data["items"][0]["toppings"] == ["mushrooms"]
    assert data["delivery"]["state"] == "delivered" and data["delivery"]["delivered_at"] == "2025-05-02T18:00:00Z"
    assert data["payload"]["total"] == "24.84"


def test_show_unknown_order_fails_clearly(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing order id is exit 1 with one line on stderr."""
    assert run(config, "orders", "show", "99") == 1
    assert capsys.readouterr().err.strip() == "voicebridge orders show: no order #99"


def test_bad_order_id_is_a_usage_error(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-number id is rejected by argparse (exit 2)."""
    with pytest.raises(SystemExit) as info:
        run(config, "orders", "show", "abc")
    assert info.value.code == 2
    assert "expected a whole number" in capsys.readouterr().err


def test_missing_database_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a database file the commands say so and do not create one."""
    config = Config(db_path=tmp_path / "none.sqlite3")
    assert run(config, "orders") == 2
    assert "no database at" in capsys.readouterr().err
    assert run(config, "resend", "1") == 2
    assert not config.db_path.exists()


def test_empty_database_says_no_orders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database without orders prints a plain sentence."""
    config = Config(db_path=tmp_path / "vb.sqlite3")

    async def create() -> None:
        await (await Store.open(config.db_path)).aclose()

    trio.run(create)
    assert run(config, "orders") == 0
    assert capsys.readouterr().out.strip() == "No orders yet."


def test_resend_revives_a_dead_delivery(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """resend ID puts a dead delivery back to pending with a fresh attempt count."""
    assert run(config, "resend", "2") == 0
    assert capsys.readouterr().out.strip() == "Order #2 is queued to be sent again (it was dead)."
    row = outbox(config, 2)
    assert (row.state, row.attempts, row.last_error) == ("pending", 0, "HTTP 503")


def test_resend_of_a_delivered_order_needs_force(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """A delivered order is not resent without --force; with it, it is."""
    assert run(config, "resend", "1") == 1
    assert "use --force" in capsys.readouterr().err
    assert outbox(config, 1).state == "delivered"
    assert run(config, "resend", "1", "--force", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "order_id": 1, "resent": True, "state_before": "delivered", "state": "pending",
    }
    assert outbox(config, 1).state == "pending"


def test_resend_of_pending_or_missing_orders(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """A pending order is left alone (exit 0); an unknown one is exit 1."""
    assert run(config, "resend", "3") == 0
    assert "already waiting" in capsys.readouterr().out
    assert run(config, "resend", "42") == 1
    assert capsys.readouterr().err.strip() == "voicebridge resend: no order #42"
