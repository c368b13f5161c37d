"""The pizza job's store operations as the tests use them: commit an order, read it back."""

from __future__ import annotations

from datetime import datetime

from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import Menu, load_menu
from voicebridge.jobs.pizza.order import Order
from voicebridge.jobs.pizza.records import OrderDetail, OrderRow, get_order, list_orders
from voicebridge.ops.store import OutboxRow, Store

MENU = load_menu(None)


async def save_order(store: Store, call_sid: str | None, order: Order, created_at: datetime, *,
                     menu: Menu = MENU, tax_rate_bp: int = 800) -> int:
    """Commit a confirmed order as a call does (order, items and webhook delivery in one transaction)."""
    job = PizzaJob(menu, tax_rate_bp)
    done = await store.commit(lambda tx: job.commit(tx, call_sid, order, created_at), now=created_at)
    return done.id


async def outbox_for_order(store: Store, order_id: int) -> OutboxRow | None:
    return await store.outbox_for(f"order:{order_id}")


async def orders(store: Store, limit: int = 20) -> list[OrderRow]:
    return await store.read(lambda tx: list_orders(tx, limit))


async def order_detail(store: Store, order_id: int) -> OrderDetail | None:
    return await store.read(lambda tx: get_order(tx, order_id))
