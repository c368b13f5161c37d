"""SQLite storage: migrations, calls, transcripts, atomic orders and the outbox (voicebridge.ops.store)."""

from __future__ import annotations

import functools
import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator

import psycopg
import pytest
import trio

from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.engine.job import CommitError
from voicebridge.ops.store import SCHEMA_VERSION, Store, StoreError
from pizza_records import order_detail, orders, outbox_for_order, save_order

MENU = load_menu(None)
T0 = datetime(2025, 5, 2, 18, 0, 0, tzinfo=timezone.utc)


def confirmed_order(name: str = "Sam") -> Order:
    """A complete pickup order: a large pepperoni with mushrooms and two sodas."""
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("pepperoni", "large", 1, ("mushrooms",)), OrderLine("soda", None, 2)]
    order.customer_name = name
    order.fulfillment = "pickup"
    return order


def rows(path: Path | str, sql: str) -> list[tuple[object, ...]]:
    """Rows from the database (an SQLite file, or the test server's PostgreSQL database, which needs
    no password), read with a separate plain connection."""
    if isinstance(path, str):
        with psycopg.connect(path) as pg:
            return [tuple(r) for r in pg.execute(sql).fetchall()]
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def ddl(target: Path | str, sqlite_sql: str, postgres_sql: str) -> None:
    """Change the schema behind the store's back (a test fault), in the engine's own dialect."""
    if isinstance(target, str):
        with psycopg.connect(target, autocommit=True) as pg:
            pg.execute(postgres_sql)
        return
    conn = sqlite3.connect(target)
    conn.executescript(sqlite_sql)
    conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "vb.sqlite3"


@pytest.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    """The store on each engine (the tests of SQLite's own file and locking use `db_path`)."""
    s = await Store.open(db_target)
    try:
        yield s
    finally:
        await s.aclose()


async def test_new_database_is_migrated_in_wal_mode(db_path: Path) -> None:
    """An empty file gets every table, the current user_version, and WAL journaling."""
    store = await Store.open(db_path)
    assert await store.schema_version() == SCHEMA_VERSION
    await store.aclose()
    tables = {r[0] for r in rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"calls", "transcripts", "orders", "order_items", "outbox"} <= tables
    assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_reopening_keeps_data_and_migrates_nothing(db_path: Path) -> None:
    """Opening an up-to-date database again is a no-op for the schema and keeps the rows."""
    first = await Store.open(db_path)
    order_id = await save_order(first, "CA1", confirmed_order(), T0)
    await first.aclose()
    schema = rows(db_path, "SELECT sql FROM sqlite_master ORDER BY name")
    second = await Store.open(db_path)
    try:
        assert await second.schema_version() == SCHEMA_VERSION
        detail = await order_detail(second, order_id)
        assert detail is not None and detail.customer == "Sam"
    finally:
        await second.aclose()
    assert rows(db_path, "SELECT sql FROM sqlite_master ORDER BY name") == schema


async def test_database_from_a_newer_version_refuses_to_open(db_path: Path) -> None:
    """A user_version beyond ours is a clear StoreError, and the file is left as it was."""
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 5}, newer than this voicebridge"):
        await Store.open(db_path)
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 5,)]
    assert rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("future",)]


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """The parent directory is not created: the error names it."""
    with pytest.raises(StoreError, match="does not exist"):
        await Store.open(tmp_path / "no-such-dir" / "vb.sqlite3")
    assert not (tmp_path / "no-such-dir").exists()


async def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    """Opening some other file fails with StoreError and leaves it alone."""
    db_path.write_bytes(b"this is not sqlite, just text " * 100)
    with pytest.raises(StoreError, match="not a database"):
        await Store.open(db_path)
    assert db_path.read_bytes().startswith(b"this is not sqlite")


async def test_calls_are_recorded_with_outcome_and_exact_cost(store: Store) -> None:
    """call_started then call_ended gives one row with UTC times, outcome and a decimal cost."""
    local = timezone(timedelta(hours=2))
    await store.call_started(
        "CA1", stream_sid="MZ1", from_number="+15550100111", to_number="+15550100999",
        direction="inbound", started_at=datetime(2025, 5, 2, 20, 0, tzinfo=local),
    )
    await store.call_ended(
        "CA1", outcome="order_confirmed", ended_at=T0 + timedelta(minutes=3),
        cost_usd=Decimal("0.123456"), cost_details={"audio_in_tokens": 1200, "twilio_usd": Decimal("0.0375")},
    )
    (call,) = await store.list_calls()
    assert call.started_at == T0
    assert call.ended_at == T0 + timedelta(minutes=3)
    assert call.outcome == "order_confirmed"
    assert call.cost_usd == Decimal("0.123456")
    assert call.cost_details == {"audio_in_tokens": 1200, "twilio_usd": "0.0375"}
    assert rows(store.path, "SELECT started_at, cost_usd FROM calls") == [("2025-05-02T18:00:00.000000Z", "0.123456")]


async def test_bad_call_arguments_raise_store_error(store: Store) -> None:
    """Duplicates, unknown calls, naive times and bad values are StoreErrors; empty optional text is stored as NULL."""
    await store.call_started(
        "CA1", stream_sid=None, from_number=None, to_number=None, direction="outbound", started_at=T0
    )
    with pytest.raises(StoreError, match="already recorded"):
        await store.call_started(
            "CA1", stream_sid=None, from_number=None, to_number=None, direction="inbound", started_at=T0
        )
    with pytest.raises(StoreError, match="no call CA404"):
        await store.call_ended("CA404", outcome="hangup", ended_at=T0, cost_usd=None, cost_details=None)
    with pytest.raises(StoreError, match="timezone-aware"):
        await store.call_started(
            "CA2", stream_sid=None, from_number=None, to_number=None, direction="inbound",
            started_at=datetime(2025, 1, 1),
        )
    await store.call_started(
        "CA4", stream_sid="", from_number="", to_number=None, direction="outbound-api", started_at=T0
    )
    with pytest.raises(StoreError, match="direction"):
        await store.call_started(
            "CA3", stream_sid=None, from_number=None, to_number=None, direction="sideways", started_at=T0
        )
    with pytest.raises(StoreError, match="cost_details is not JSON-able"):
        await store.call_ended("CA1", outcome="hangup", ended_at=T0, cost_usd=None, cost_details={"x": object()})
    calls = {c.call_sid: c for c in await store.list_calls()}
    assert sorted(calls) == ["CA1", "CA4"]
    assert (calls["CA4"].direction, calls["CA4"].from_number, calls["CA4"].stream_sid) == ("outbound-api", None, None)


async def test_transcript_keeps_order_even_when_written_concurrently(store: Store) -> None:
    """Utterances get sequence numbers 1..n and come back in order."""
    await store.add_transcript("CA1", role="assistant", text="Bridge Street Pizza, what can I get you?", item_id="i0", at=T0)
    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(
                functools.partial(store.add_transcript, "CA1", role="caller", text=f"line {n}", item_id=None, at=T0)
            )
    lines = await store.transcript("CA1")
    assert [t.seq for t in lines] == list(range(1, 22))
    assert lines[0].role == "assistant" and lines[0].item_id == "i0"
    assert sorted(t.text for t in lines[1:]) == sorted(f"line {n}" for n in range(20))
    with pytest.raises(StoreError, match="role"):
        await store.add_transcript("CA1", role="system", text="x", item_id=None, at=T0)
    assert len(await store.transcript("CA1")) == 21


async def test_transcript_lines_written_late_read_in_their_spoken_position(store: Store) -> None:
    """A caller line that arrives after the answer to it, with its spoken position, reads before the answer."""
    await store.add_transcript("CA1", role="assistant", text="Hello, Bridge Street Pizza.", item_id="a1", at=T0, position=1)
    await store.add_transcript("CA1", role="assistant", text="One large pepperoni.", item_id="a2", at=T0, position=3)
    await store.add_transcript("CA1", role="caller", text="A large pepperoni.", item_id="c1", at=T0, position=2)
    assert [t.item_id for t in await store.transcript("CA1")] == ["a1", "c1", "a2"]
    with pytest.raises(StoreError, match="already taken"):
        await store.add_transcript("CA1", role="caller", text="again", item_id="c2", at=T0, position=2)
    with pytest.raises(StoreError, match="position"):
        await store.add_transcript("CA1", role="caller", text="x", item_id="c3", at=T0, position=0)
    assert len(await store.transcript("CA1")) == 3


async def test_confirmed_order_stores_order_items_and_a_pending_outbox_row(store: Store) -> None:
    """One call stores the order with totals, its items, and an outbox row due at once with the payload."""
    order_id = await save_order(store, "CA1", confirmed_order(), T0)
    detail = await order_detail(store, order_id)
    assert detail is not None
    assert (detail.customer, detail.fulfillment, detail.phone) == ("Sam", "pickup", "+15550100111")
    assert (detail.subtotal_cents, detail.tax_cents, detail.total_cents) == (2300, 184, 2484)
    assert [(i.line, i.item, i.size, i.quantity, i.toppings, i.line_cents) for i in detail.items] == [
        (1, "pepperoni", "large", 1, ("mushrooms",), 1800),
        (2, "soda", None, 2, (), 500),
    ]
    assert detail.payload["order_id"] == order_id and detail.payload["total"] == "24.84"
    box = detail.outbox
    assert box is not None
    assert (box.state, box.attempts, box.next_attempt_at) == ("pending", 0, T0)
    assert box.idempotency_key.startswith(f"order-{order_id}-")
    assert box.payload == rows(store.path, "SELECT payload FROM orders")[0][0]
    due = await store.next_due(T0)
    assert due is not None and (due.idempotency_key, due.payload, due.event) == (box.idempotency_key, box.payload, "order.created")
    assert await store.next_due(T0 - timedelta(seconds=1)) is None
    assert await store.next_due_time() == T0


async def test_idempotency_keys_differ_between_orders(store: Store) -> None:
    """Each order's delivery has its own key."""
    a = await save_order(store, "CA1", confirmed_order(), T0)
    b = await save_order(store, "CA2", confirmed_order("Robin"), T0)
    boxes = [await outbox_for_order(store, a), await outbox_for_order(store, b)]
    assert boxes[0] is not None and boxes[1] is not None
    assert boxes[0].idempotency_key != boxes[1].idempotency_key
    assert [o.id for o in await orders(store)] == [b, a]


async def test_order_and_outbox_commit_together_or_not_at_all(store: Store) -> None:
    """If the outbox insert fails inside the transaction, no order or item row is left either."""
    ddl(store.path, "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        "CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
        " CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION fail_outbox()")
    with pytest.raises(StoreError, match="disk full"):
        await save_order(store, "CA1", confirmed_order(), T0)
    assert rows(store.path, "SELECT COUNT(*) FROM orders") == [(0,)]
    assert rows(store.path, "SELECT COUNT(*) FROM order_items") == [(0,)]
    assert rows(store.path, "SELECT COUNT(*) FROM outbox") == [(0,)]
    assert await orders(store) == []
    # The store still works once the fault is gone.
    ddl(store.path, "DROP TRIGGER fail_outbox;", "DROP TRIGGER fail_outbox ON outbox")
    order_id = await save_order(store, "CA1", confirmed_order(), T0)
    assert await outbox_for_order(store, order_id) is not None


async def test_incomplete_order_is_refused_before_writing(store: Store) -> None:
    """An order without a name (or not on the menu) is the job's refusal (CommitError) and writes nothing."""
    order = confirmed_order()
    order.customer_name = None
    with pytest.raises(CommitError, match="missing name"):
        await save_order(store, "CA1", order, T0)
    order = confirmed_order()
    order.lines.append(OrderLine("calzone", None, 1))
    with pytest.raises(CommitError, match="calzone"):
        await save_order(store, "CA1", order, T0)
    assert rows(store.path, "SELECT COUNT(*) FROM orders") == [(0,)]


async def test_outbox_retry_dead_and_resend(store: Store) -> None:
    """A failed attempt is rescheduled; a dead row stays; resend brings it back, --force a delivered one."""
    order_id = await save_order(store, "CA1", confirmed_order(), T0)
    box = await store.next_due(T0)
    assert box is not None
    later = T0 + timedelta(seconds=7)
    assert await store.mark_retry(box.id, next_attempt_at=later, error="HTTP 500")
    assert await store.next_due(T0 + timedelta(seconds=6)) is None
    assert await store.next_due_time() == later
    assert await store.mark_dead(box.id, error="timed out after 10 s")
    dead = await outbox_for_order(store, order_id)
    assert dead is not None and (dead.state, dead.attempts, dead.last_error) == ("dead", 2, "timed out after 10 s")
    assert await store.next_due(later + timedelta(days=1)) is None
    assert not await store.mark_delivered(box.id, delivered_at=later)  # only pending rows move
    assert (await orders(store))[0].delivery_state == "dead"

    assert await store.resend(f"order:{order_id}", now=later)
    revived = await outbox_for_order(store, order_id)
    assert revived is not None and (revived.state, revived.attempts, revived.next_attempt_at) == ("pending", 0, later)
    assert not await store.resend(f"order:{order_id}", now=later)  # already pending

    assert await store.mark_delivered(box.id, delivered_at=later)
    assert not await store.resend(f"order:{order_id}", now=later)
    assert await store.resend(f"order:{order_id}", force=True, now=later)
    again = await outbox_for_order(store, order_id)
    assert again is not None and again.state == "pending" and again.delivered_at is None
    with pytest.raises(StoreError, match="order #999"):
        await store.resend(f"order:{999}")


async def test_bad_store_arguments_are_store_errors(store: Store) -> None:
    """Out-of-range ids and limits are refused (ValueError from the job's queries, StoreError from the store)."""
    with pytest.raises(ValueError, match="order_id"):
        await order_detail(store, 0)
    with pytest.raises(ValueError, match="limit"):
        await orders(store, 0)
    with pytest.raises(StoreError, match="timezone-aware"):
        await store.next_due(datetime(2025, 1, 1))


async def test_check_writable_passes_then_fails_when_locked_or_closed(db_path: Path) -> None:
    """Readiness: writable normally; a StoreError while another process holds the write lock, or once closed."""
    store = await Store.open(db_path, busy_timeout_ms=50)
    await store.check_writable()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            await store.check_writable()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.check_writable()
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.check_writable()
    await store.aclose()  # idempotent


async def test_check_writable_fails_on_a_read_only_postgresql_database(pg: Any) -> None:
    """Readiness on PostgreSQL: a database that takes no writes (a standby after a failover) is not ready."""
    url = pg.new_database()
    store = await Store.open(url)
    try:
        await store.check_writable()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET default_transaction_read_only = on")
        await store.aclose()
        store = await Store.open(url)  # new connections read the new setting
        with pytest.raises(StoreError, match="read-only"):
            await store.check_writable()
    finally:
        await store.aclose()
