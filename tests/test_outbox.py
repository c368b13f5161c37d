"""Webhook delivery: signing, retries with backoff, dead rows, resend, and surviving restarts (voicebridge.ops.outbox)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio
from trio.testing import MockClock

from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.ops.outbox import USER_AGENT, OutboxWorker, backoff_delay_s
from voicebridge.peers.webhook_receiver import Behavior, Receiver, serve_webhook_receiver
from voicebridge.ops.store import OutboxRow, Store
from pizza_records import outbox_for_order, save_order

MENU = load_menu(None)
SECRET = "test-webhook-secret-7d1f"


def confirmed_order() -> Order:
    """A pepperoni with mushrooms and two sodas for pickup: 3 items, $24.84 at 8%."""
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("pepperoni", "large", 1, ("mushrooms",)), OrderLine("soda", None, 2)]
    order.customer_name = "Sam"
    order.fulfillment = "pickup"
    return order


async def save(store: Store, created_at: datetime | None = None) -> int:
    """Commit a confirmed order (and its outbox row); return its id."""
    when = created_at or datetime.now(timezone.utc)
    return await save_order(store, "CA1", confirmed_order(), when)


async def box(store: Store, order_id: int) -> OutboxRow:
    row = await outbox_for_order(store, order_id)
    assert row is not None
    return row


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll `check` every 10 ms until it is true; fail after `timeout_s`."""
    with trio.fail_after(timeout_s):
        for _ in range(100_000):
            if await check():
                return
            await trio.sleep(0.01)


@pytest.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    s = await Store.open(db_target)
    try:
        yield s
    finally:
        await s.aclose()


def fast_worker(store: Store, url: str, **options: Any) -> OutboxWorker:
    """A worker with millisecond backoff (base 10 ms, cap 50 ms) and a 0.5 s poll, unless overridden."""
    settings: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "poll_s": 0.5, **options}
    return OutboxWorker(store, url, SECRET, **settings)


async def start_receiver(nursery: trio.Nursery, secret: str = SECRET, **kw: object) -> Receiver:
    receiver: Receiver = await nursery.start(lambda task_status: serve_webhook_receiver(secret=secret, task_status=task_status, **kw))  # type: ignore[arg-type]
    return receiver


# -- backoff ----------------------------------------------------------------------------


def test_backoff_doubles_from_two_seconds_to_a_five_minute_cap() -> None:
    """Full jitter: the ceiling is 2, 4, 8 ... 256 then 300 s; the delay is rand() x ceiling."""
    ceilings = [backoff_delay_s(n, rand=lambda: 1.0) for n in range(1, 12)]
    assert ceilings == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert backoff_delay_s(3, rand=lambda: 0.25) == 2.0
    assert backoff_delay_s(1, rand=lambda: 0.0) == 0.0
    assert backoff_delay_s(10_000, rand=lambda: 0.5) == 150.0
    with pytest.raises(ValueError):
        backoff_delay_s(0)


async def test_retries_follow_the_backoff_schedule_then_the_row_dies(
    db_target: Path | str, autojump_clock: MockClock
) -> None:
    """On a mock clock, 500s are retried after 1, 2, 4, 8 s (rand 0.5), then the row is dead and kept."""
    store = await Store.open(db_target, threaded=False)
    t0 = datetime(2025, 5, 2, 18, 0, tzinfo=timezone.utc)
    start = trio.current_time()
    seen: list[tuple[float, httpx.Request]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((trio.current_time() - start, request))
        return httpx.Response(500)

    def now() -> datetime:
        return t0 + timedelta(seconds=trio.current_time() - start)

    order_id = await save(store, t0)
    worker = OutboxWorker(
        store, "https://shop.example/orders", SECRET, max_attempts=5, timeout_s=10, poll_s=30,
        now=now, rand=lambda: 0.5, transport=httpx.MockTransport(handler),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await wait_until(lambda: _state_is(store, order_id, "dead"), timeout_s=600)
        nursery.cancel_scope.cancel()
    assert [t for t, _ in seen] == [0, 1, 3, 7, 15]
    row = await box(store, order_id)
    assert (row.state, row.attempts, row.last_error) == ("dead", 5, "HTTP 500")
    # Every attempt sent the same body and key, signed over its own timestamp.
    for t, request in seen:
        assert request.content.decode() == row.payload
        assert request.headers["Idempotency-Key"] == row.idempotency_key
        assert request.headers["X-Voicebridge-Timestamp"] == str(int((t0 + timedelta(seconds=t)).timestamp()))
        expected = hmac.new(
            SECRET.encode(), request.headers["X-Voicebridge-Timestamp"].encode() + b"." + request.content, hashlib.sha256
        ).hexdigest()
        assert request.headers["X-Voicebridge-Signature"] == f"sha256={expected}"
        assert request.headers["User-Agent"] == USER_AGENT
        assert request.headers["Content-Type"] == "application/json"
    await store.aclose()


async def _state_is(store: Store, order_id: int, state: str) -> bool:
    row = await outbox_for_order(store, order_id)
    return row is not None and row.state == state


async def test_wake_delivers_at_once_and_polling_finds_rows_others_wrote(
    db_target: Path | str, autojump_clock: MockClock
) -> None:
    """A woken worker sends immediately; a row it was not told about goes out at the next poll."""
    store = await Store.open(db_target, threaded=False)
    start = trio.current_time()
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(trio.current_time() - start)
        return httpx.Response(204)

    worker = OutboxWorker(store, "https://shop.example/orders", SECRET, poll_s=30, transport=httpx.MockTransport(handler))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(5)
        first = await save(store)
        worker.wake()
        await wait_until(lambda: _state_is(store, first, "delivered"), timeout_s=1)
        second = await save(store)  # e.g. revived by `voicebridge resend` in another process
        await wait_until(lambda: _state_is(store, second, "delivered"), timeout_s=60)
        nursery.cancel_scope.cancel()
    assert sent_at == [5, 30 + 5]
    await store.aclose()


# -- against the local receiver (real clock, loopback) ----------------------------------


async def test_order_is_delivered_signed_and_announced(store: Store) -> None:
    """The receiver verifies the signature, records the exact payload and prints its summary."""
    lines: list[str] = []
    order_id = await save(store)
    async with trio.open_nursery() as nursery:
        receiver = await start_receiver(nursery, announce=lines.append)
        worker = fast_worker(store, receiver.url, max_attempts=3, timeout_s=2)
        await nursery.start(worker.run)
        with trio.fail_after(5):
            await receiver.wait_for(1)
        await wait_until(lambda: _state_is(store, order_id, "delivered"))
        nursery.cancel_scope.cancel()
    row = await box(store, order_id)
    assert row.attempts == 1 and row.delivered_at is not None
    assert receiver.received == [json.loads(row.payload)]
    assert receiver.keys == [row.idempotency_key]
    assert lines == [f"webhook received order #{order_id}: 3 items, total $24.84"]


async def test_wrong_secret_is_rejected_and_retried_until_dead(store: Store) -> None:
    """A receiver with another secret answers 401; after max_attempts the row is dead, not deleted."""
    order_id = await save(store)
    results: list[str] = []
    async with trio.open_nursery() as nursery:
        receiver = await start_receiver(nursery, secret="another-secret")
        worker = fast_worker(store, receiver.url, max_attempts=3, timeout_s=2, on_result=results.append)
        await nursery.start(worker.run)
        await wait_until(lambda: _state_is(store, order_id, "dead"))
        nursery.cancel_scope.cancel()
    row = await box(store, order_id)
    assert (row.attempts, row.last_error) == (3, "HTTP 401")
    assert results == ["retry", "retry", "dead"]  # what the daemon counts in webhook_deliveries_total
    assert receiver.received == []
    assert [r.problem for r in receiver.requests] == ["bad signature"] * 3


async def test_server_errors_are_retried_until_it_recovers(store: Store) -> None:
    """500s are retried with backoff; once the shop answers 200 the order is delivered once."""
    order_id = await save(store)
    async with trio.open_nursery() as nursery:
        receiver = await start_receiver(nursery)
        receiver.behavior = Behavior.FAIL
        results: list[str] = []
        worker = fast_worker(store, receiver.url, max_attempts=20, timeout_s=2, on_result=results.append)
        await nursery.start(worker.run)
        with trio.fail_after(5):
            await receiver.wait_for_requests(2)
        receiver.behavior = Behavior.OK
        await wait_until(lambda: _state_is(store, order_id, "delivered"))
        nursery.cancel_scope.cancel()
    row = await box(store, order_id)
    failures = [r for r in receiver.requests if r.status == 500]
    assert len(failures) >= 2
    assert row.attempts == len(failures) + 1
    assert row.last_error == "HTTP 500"
    assert len(receiver.received) == 1
    assert results == ["retry"] * len(failures) + ["delivered"]


async def test_a_hanging_webhook_times_out_and_is_retried(store: Store) -> None:
    """A receiver that never answers costs one timeout per attempt, then delivery succeeds."""
    order_id = await save(store)
    async with trio.open_nursery() as nursery:
        receiver = await start_receiver(nursery)
        receiver.behavior = Behavior.HANG
        worker = fast_worker(store, receiver.url, max_attempts=20, timeout_s=0.2)
        await nursery.start(worker.run)
        with trio.fail_after(5):
            await receiver.wait_for_requests(2)
        await wait_until(lambda: _last_error_is(store, order_id, "timed out after 0.2 s"))
        receiver.behavior = Behavior.OK
        await wait_until(lambda: _state_is(store, order_id, "delivered"))
        nursery.cancel_scope.cancel()
    assert len(receiver.received) == 1


async def _last_error_is(store: Store, order_id: int, error: str) -> bool:
    row = await outbox_for_order(store, order_id)
    return row is not None and row.last_error == error


async def test_outage_across_a_restart_delivers_exactly_once(db_target: Path | str) -> None:
    """Receiver down: attempts are recorded; after a worker and store restart it comes up and gets one delivery."""
    path = db_target
    async with trio.open_nursery() as outer:
        receiver = await start_receiver(outer)
        await receiver.go_down()

        store = await Store.open(path)
        order_id = await save(store)
        async with trio.open_nursery() as process:
            worker = fast_worker(store, receiver.url, max_attempts=50, timeout_s=1)
            await process.start(worker.run)
            await wait_until(lambda: _attempts_at_least(store, order_id, 2))
            process.cancel_scope.cancel()  # the process dies
        await store.aclose()

        down = await _row(path, order_id)
        assert down.state == "pending" and down.attempts >= 2
        assert down.last_error is not None and "Connect" in down.last_error
        assert receiver.requests == []

        store = await Store.open(path)  # the process restarts
        await receiver.come_up()
        async with trio.open_nursery() as process:
            worker = fast_worker(store, receiver.url, max_attempts=50, timeout_s=1)
            await process.start(worker.run)
            await wait_until(lambda: _state_is(store, order_id, "delivered"))
            process.cancel_scope.cancel()
        row = await box(store, order_id)
        await store.aclose()
        outer.cancel_scope.cancel()
    assert receiver.keys == [row.idempotency_key]
    assert len(receiver.received) == 1 and len(receiver.requests) == 1
    assert row.attempts == down.attempts + 1


async def _attempts_at_least(store: Store, order_id: int, n: int) -> bool:
    row = await outbox_for_order(store, order_id)
    return row is not None and row.attempts >= n


async def _row(path: Path | str, order_id: int) -> OutboxRow:
    store = await Store.open(path)
    try:
        return await box(store, order_id)
    finally:
        await store.aclose()


async def test_delivery_in_flight_when_the_process_dies_is_resent_and_deduped(db_target: Path | str) -> None:
    """The shop got the order but the answer was lost: after restart, once the dead process's claim
    runs out, it is sent again and deduped by key."""
    path = db_target
    async with trio.open_nursery() as outer:
        receiver = await start_receiver(outer)
        receiver.behavior = Behavior.ACCEPT_THEN_HANG
        store = await Store.open(path)
        order_id = await save(store)
        async with trio.open_nursery() as process:
            worker = fast_worker(store, receiver.url, max_attempts=5, timeout_s=30, lease_s=0.5)
            await process.start(worker.run)
            with trio.fail_after(5):
                await receiver.wait_for_requests(1)
            claimed = await box(store, order_id)
            assert claimed.claimed_by == worker.owner and claimed.lease_until is not None
            process.cancel_scope.cancel()  # dies mid-request
        await store.aclose()

        receiver.behavior = Behavior.OK
        store = await Store.open(path)
        async with trio.open_nursery() as process:
            worker = fast_worker(store, receiver.url, max_attempts=5, timeout_s=2)
            await process.start(worker.run)
            await wait_until(lambda: _state_is(store, order_id, "delivered"))
            process.cancel_scope.cancel()
        row = await box(store, order_id)
        await store.aclose()
        outer.cancel_scope.cancel()
    assert len(receiver.received) == 1
    assert [(r.key, r.duplicate) for r in receiver.requests] == [
        (row.idempotency_key, False),
        (row.idempotency_key, True),
    ]
    assert row.attempts == 1  # the lost attempt never reported back


async def test_resend_revives_a_dead_delivery(store: Store) -> None:
    """A dead row is kept; resend puts it back to pending and a woken worker delivers it."""
    order_id = await save(store)
    async with trio.open_nursery() as nursery:
        receiver = await start_receiver(nursery)
        receiver.behavior = Behavior.FAIL
        worker = fast_worker(store, receiver.url, max_attempts=2, timeout_s=2, poll_s=60)
        await nursery.start(worker.run)
        await wait_until(lambda: _state_is(store, order_id, "dead"))
        dead = await box(store, order_id)
        assert (dead.attempts, dead.last_error) == (2, "HTTP 500")
        receiver.behavior = Behavior.OK
        assert await store.resend(f"order:{order_id}")
        worker.wake()
        await wait_until(lambda: _state_is(store, order_id, "delivered"))
        nursery.cancel_scope.cancel()
    assert len(receiver.received) == 1
    assert (await box(store, order_id)).attempts == 1


async def test_without_a_url_the_worker_does_not_run_and_rows_stay_pending(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """No ORDER_WEBHOOK_URL: run() says so once and returns; the order stays pending."""
    order_id = await save(store)
    worker = OutboxWorker(store, None, None)
    with caplog.at_level(logging.INFO, logger="voicebridge.ops.outbox"):
        with trio.fail_after(1):
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
    assert [r.getMessage() for r in caplog.records] == [
        "ORDER_WEBHOOK_URL is not set: confirmed orders stay pending in the outbox"
    ]
    assert (await box(store, order_id)).state == "pending"


def test_a_url_without_a_secret_is_refused() -> None:
    """Deliveries are always signed: a URL needs a secret."""
    with pytest.raises(ValueError, match="ORDER_WEBHOOK_SECRET"):
        OutboxWorker(None, "http://127.0.0.1:9/orders", None)  # type: ignore[arg-type]


async def test_logs_carry_neither_the_secret_nor_the_payload(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Failure and success log lines name the order and error, never the secret, customer or URL path."""
    order_id = await save(store)
    with caplog.at_level(logging.DEBUG, logger="voicebridge.ops.outbox"):
        async with trio.open_nursery() as nursery:
            receiver = await start_receiver(nursery)
            receiver.behavior = Behavior.FAIL
            worker = fast_worker(store, receiver.url + "?token=abc123", max_attempts=10, timeout_s=2)
            await nursery.start(worker.run)
            with trio.fail_after(5):
                await receiver.wait_for_requests(2)
            receiver.behavior = Behavior.OK
            await wait_until(lambda: _state_is(store, order_id, "delivered"))
            nursery.cancel_scope.cancel()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"order #{order_id} webhook attempt 1 failed (HTTP 500)" in text
    assert f"order #{order_id} delivered" in text
    for secret in (SECRET, "Sam", "+15550100111", "abc123", "/orders", "pepperoni"):
        assert secret not in text
