"""The menu's day as the pizza job sees it (pure): sold-out items and sizes are refused with a
reason the model can say and leave the order as it was; a closed shop takes no order; the board's
status rules let an order only move forward."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from voicebridge.business import SCHEMAS
from voicebridge.jobs.pizza import board
from voicebridge.jobs.pizza.day import Availability
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.ops.store import Store

NOW = datetime(2026, 5, 1, 18, 0, tzinfo=timezone.utc)


def job(day: Availability) -> PizzaJob:
    j = PizzaJob(load_menu(None))
    j.day.current = day
    return j


def add(j: PizzaJob, order: Order, **args: object) -> dict[str, object]:
    return j.run_tool(order, "add_item", json.dumps(args), NOW).output


def test_a_sold_out_item_is_refused_with_a_reason_and_the_order_is_unchanged() -> None:
    j = job(Availability(sold_out_items=frozenset({"pepperoni"})))
    order = Order.empty()
    assert add(j, order, item="margherita", size="large")["ok"] is True
    out = add(j, order, item="pepperoni", size="large")
    assert out == {"ok": False, "error": "Sorry, the pepperoni pizza is sold out for today; offer the caller "
                                         "something else."}
    assert [line.item for line in order.lines] == ["margherita"]
    assert "Sold out today: pepperoni pizza; do not offer them." in j.instructions(NOW)


def test_a_sold_out_size_is_refused_for_new_lines_and_for_changes() -> None:
    j = job(Availability(sold_out_sizes=frozenset({"large"})))
    order = Order.empty()
    assert add(j, order, item="margherita", size="medium")["ok"] is True
    refused = j.run_tool(order, "update_item", json.dumps({"line": 1, "size": "large"}), NOW)
    assert not refused.ok and "large is sold out" in refused.output["error"]
    assert order.lines == [OrderLine("margherita", "medium", 1)]
    assert add(j, order, item="pepperoni", size="large")["ok"] is False


def test_the_same_item_twice_is_still_checked() -> None:
    j = job(Availability())
    order = Order.empty()
    assert add(j, order, item="pepperoni", size="large")["ok"] is True
    j.day.current = Availability(sold_out_items=frozenset({"pepperoni"}))  # staff mark it mid-call
    assert add(j, order, item="pepperoni", size="large")["ok"] is False
    assert len(order.lines) == 1


def test_a_closed_shop_takes_no_order_and_says_what_it_offers() -> None:
    j = job(Availability(closed=True, closed_message="We open again at 5 pm."))
    order = Order.empty()
    out = add(j, order, item="margherita", size="large")
    assert out["error"] == "The shop is closed right now and cannot take orders. We open again at 5 pm."
    assert order.lines == []
    assert not j.run_tool(order, "confirm_order", "{}", NOW).ok
    assert "The shop is closed right now" in j.instructions(NOW)
    assert j.run_tool(order, "get_menu", "{}", NOW).ok  # the caller can still ask what there is
    assert j.prompts.greeting == ("Greet the caller and tell them: The shop is closed right now and cannot take "
                                  "orders. We open again at 5 pm. Offer a transfer to the shop if they want a person.")
    j.day.current = Availability()
    assert j.prompts.greeting.startswith("Greet the caller: thank them for calling")


async def test_orders_move_only_forward_and_a_cancel_needs_a_reason(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "vb.sqlite3", schemas=SCHEMAS)
    try:
        order = Order.empty(caller_number="+15550100111")
        order.lines.append(OrderLine("pepperoni", "large", 1))
        order.customer_name, order.fulfillment = "Sam", "pickup"
        pizza = PizzaJob(load_menu(None))
        done = await store.commit(lambda tx: pizza.commit(tx, "CA1", order, NOW))
        oid = done.id
        for bad, message in (("ready", "order #1 is new: it cannot become ready"),
                             ("cancelled", "say why the order is cancelled"), ("eaten", "unknown status 'eaten'")):
            with pytest.raises(board.StatusError, match=message):
                await store.commit(lambda tx, bad=bad: board.move(tx, oid, bad, NOW))
        for to in ("preparing", "ready"):
            await store.commit(lambda tx, to=to: board.move(tx, oid, to, NOW))
        with pytest.raises(board.StatusError, match="cannot become preparing"):
            await store.commit(lambda tx: board.move(tx, oid, "preparing", NOW))
        await store.commit(lambda tx: board.move(tx, oid, "cancelled", NOW, "caller never came"))
        rows = await store.read(lambda tx: tx.execute("SELECT status, status_reason FROM orders WHERE id = ?", (oid,)))
        assert rows == [{"status": "cancelled", "status_reason": "caller never came"}]
        with pytest.raises(board.StatusError, match="order #9 does not exist"):
            await store.commit(lambda tx: board.move(tx, 9, "preparing", NOW))
    finally:
        await store.aclose()
