"""Two processes deliver from one PostgreSQL outbox: every order exactly once, and a process killed
with SIGKILL in the middle of a delivery is recovered by the other when its claim's lease runs out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
import trio

from voicebridge.business import SCHEMAS
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.ops.store import Store
from voicebridge.peers.webhook_receiver import Behavior, Receiver, serve_webhook_receiver
from pg_server import shared_server
from pizza_records import outbox_for_order, save_order

SECRET = "whsec-test-processes"
SCRIPT = Path(__file__).with_name("outbox_process.py")
T0 = datetime(2025, 5, 2, 18, 0, 0, tzinfo=timezone.utc)


def an_order(i: int) -> Order:
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("soda", None, 1 + i % 3)]
    order.customer_name = f"Guest {i}"
    order.fulfillment = "pickup"
    return order


class Instance:
    def __init__(self, db: str, url: str, owner: str, lease_s: float, timeout_s: float, log: Path) -> None:
        self.owner = owner
        self.log = log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), *sys.path])}
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), db, url, SECRET, owner, str(lease_s), str(timeout_s)],
            stdout=subprocess.PIPE, stderr=open(log, "wb"), env=env,
        )

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        assert line.strip() == b"ready", self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not await check():
            await trio.sleep(0.05)


@pytest.fixture
async def db() -> AsyncIterator[tuple[str, Store]]:
    url = shared_server().new_database()
    store = await Store.open(url, schemas=SCHEMAS)
    try:
        yield url, store
    finally:
        await store.aclose()


async def test_fifty_orders_from_two_processes_with_a_flapping_receiver_arrive_once_each(
        db: tuple[str, Store], tmp_path: Path) -> None:
    url, store = db
    ids = [await save_order(store, f"CA{i}", an_order(i), T0) for i in range(50)]
    instances: list[Instance] = []
    async with trio.open_nursery() as nursery:
        receiver: Receiver = await nursery.start(
            lambda task_status: serve_webhook_receiver(secret=SECRET, task_status=task_status))

        async def flap() -> None:
            for n in range(10_000):  # 500 for 60 ms, then 200 for 40 ms, over and over
                receiver.behavior = Behavior.FAIL if n % 2 == 0 else Behavior.OK
                await trio.sleep(0.06 if n % 2 == 0 else 0.04)

        receiver.behavior = Behavior.FAIL  # down until both processes are up
        try:
            for name in ("one", "two"):
                instances.append(Instance(url, receiver.url, name, 10.0, 2.0, tmp_path / f"{name}.log"))
            for instance in instances:
                await instance.ready()
            nursery.start_soon(flap)

            async def all_delivered() -> bool:
                rows = [await outbox_for_order(store, i) for i in ids]
                return all(r is not None and r.state == "delivered" for r in rows)

            await wait_until(all_delivered, 60)
        finally:
            for instance in instances:
                instance.stop()
        nursery.cancel_scope.cancel()
    assert sorted(p["order_id"] for p in receiver.received) == ids  # each order once
    ok_new = [r for r in receiver.requests if r.status == 200 and not r.duplicate]
    assert len(ok_new) == 50
    assert any(r.status == 500 for r in receiver.requests)  # the flapping was felt
    logs = {i.owner: i.log.read_text() for i in instances}
    assert all("delivered to the webhook" in text for text in logs.values()), "both processes delivered"


async def test_a_process_killed_mid_delivery_is_recovered_by_the_other(db: tuple[str, Store], tmp_path: Path) -> None:
    url, store = db
    order_id = await save_order(store, "CA1", an_order(1), T0)
    async with trio.open_nursery() as nursery:
        receiver: Receiver = await nursery.start(
            lambda task_status: serve_webhook_receiver(secret=SECRET, task_status=task_status))
        receiver.behavior = Behavior.ACCEPT_THEN_HANG  # the shop records the order; the answer never comes
        first = Instance(url, receiver.url, "first", 3.0, 30.0, tmp_path / "first.log")
        second: Instance | None = None
        try:
            await first.ready()
            with trio.fail_after(20):
                await receiver.wait_for_requests(1)
            row = await outbox_for_order(store, order_id)
            assert row is not None and row.claimed_by == "first"
            second = Instance(url, receiver.url, "second", 3.0, 2.0, tmp_path / "second.log")
            await second.ready()
            receiver.behavior = Behavior.OK
            first.proc.send_signal(signal.SIGKILL)  # a crash in the middle of the delivery
            first.proc.wait(timeout=10)

            async def delivered() -> bool:
                r = await outbox_for_order(store, order_id)
                return r is not None and r.state == "delivered"

            await wait_until(delivered, 30)
        finally:
            first.stop()
            if second is not None:
                second.stop()
        nursery.cancel_scope.cancel()
    row = await outbox_for_order(store, order_id)
    assert row is not None and row.claimed_by is None and row.attempts == 1  # the killed attempt never reported
    assert [(r.key, r.duplicate) for r in receiver.requests] == [(row.idempotency_key, False),
                                                                 (row.idempotency_key, True)]
    assert len(receiver.received) == 1
    assert f"order #{order_id} delivered to the webhook" in (tmp_path / "second.log").read_text()
    assert "delivered" not in (tmp_path / "first.log").read_text()
