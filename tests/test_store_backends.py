"""The store on both engines: one migration list giving the same schema, and the same behaviour
of calls, orders, outbox claims, redeemed tokens and the live-call registry (voicebridge.ops.store)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator

import psycopg
import pytest
import trio

from voicebridge.business import SCHEMAS
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.ops.db import placeholders, translate_ddl
from voicebridge.ops.store import SCHEMA_VERSION, Store, StoreError
from pg_server import shared_server
from pizza_records import order_detail, outbox_for_order, save_order

T0 = datetime(2025, 5, 2, 18, 0, 0, tzinfo=timezone.utc)


def confirmed_order(name: str = "Sam") -> Order:
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("pepperoni", "large", 1, ("mushrooms",)), OrderLine("soda", None, 2)]
    order.customer_name = name
    order.fulfillment = "pickup"
    return order


@pytest.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    s = await Store.open(db_target, schemas=SCHEMAS)
    try:
        yield s
    finally:
        await s.aclose()


# -- one migration list, two dialects ---------------------------------------------------


def _type_class(declared: str) -> str:
    t = declared.lower()
    return "integer" if "int" in t else "text" if t in ("text", "character varying") else t


def sqlite_schema(path: Path) -> dict[str, list[tuple[str, str, bool, bool]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted((c[1], _type_class(c[2]), bool(c[3]) or bool(c[5]), bool(c[5]))
                          for c in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        conn.close()


def pg_schema(url: str) -> dict[str, list[tuple[str, str, bool, bool]]]:
    with psycopg.connect(url) as conn:
        pk = {(r[0], r[1]) for r in conn.execute(
            "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc"
            " JOIN information_schema.key_column_usage kcu ON tc.constraint_name = kcu.constraint_name"
            " AND tc.table_schema = kcu.table_schema WHERE tc.constraint_type = 'PRIMARY KEY'"
            " AND tc.table_schema = 'public'")}
        out: dict[str, list[tuple[str, str, bool, bool]]] = {}
        for table, column, dtype, nullable in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name <> 'voicebridge_schema'"):
            out.setdefault(table, []).append((column, _type_class(dtype), nullable == "NO", (table, column) in pk))
        return {t: sorted(cols) for t, cols in out.items()}


def _constraints_sqlite(path: Path) -> dict[str, tuple[int, int]]:
    """Per table: (unique indexes incl. the key, foreign keys)."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'sqlite_%'")]
        out = {}
        for t in tables:
            uniques = [i for i in conn.execute(f"PRAGMA index_list({t})") if i[2]]
            has_rowid_pk = any(c[5] for c in conn.execute(f"PRAGMA table_info({t})")) and not any(
                i[3] == "pk" for i in uniques)
            out[t] = (len(uniques) + (1 if has_rowid_pk else 0), len(list(conn.execute(f"PRAGMA foreign_key_list({t})"))))
        return out
    finally:
        conn.close()


def _constraints_pg(url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(url) as conn:
        out: dict[str, list[int]] = {}
        for table, kind in conn.execute("SELECT table_name, constraint_type FROM information_schema.table_constraints"
                                        " WHERE table_schema = 'public' AND table_name <> 'voicebridge_schema'"
                                        " AND constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')"):
            counts = out.setdefault(table, [0, 0])
            counts[1 if kind == "FOREIGN KEY" else 0] += 1
        return {t: (c[0], c[1]) for t, c in out.items()}


async def test_every_migration_gives_the_same_schema_on_both_engines(tmp_path: Path) -> None:
    """The engine's migrations and every job's, applied to an empty SQLite file and an empty PostgreSQL
    database: the same tables, columns, type classes, NOT NULLs, keys, unique and foreign-key constraints."""
    url = shared_server().new_database()
    path = tmp_path / "vb.sqlite3"
    for target in (path, url):
        s = await Store.open(target, schemas=SCHEMAS)
        assert await s.schema_version() == SCHEMA_VERSION
        await s.aclose()
    lite, pg = sqlite_schema(path), pg_schema(url)
    assert set(lite) == set(pg) and {"calls", "orders", "outbox", "live_calls", "redeemed_tokens"} <= set(pg)
    assert lite == pg
    assert _constraints_sqlite(path) == {t: _constraints_pg(url).get(t, (0, 0)) for t in lite}


def test_ddl_and_placeholders_translate_mechanically() -> None:
    assert translate_ddl("id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL") == (
        "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL")
    assert placeholders("SELECT * FROM t WHERE a = ? AND b LIKE '%?%'") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE '%%?%%'")


async def test_reopening_migrates_nothing_and_a_newer_database_is_refused(db_target: Path | str) -> None:
    first = await Store.open(db_target, schemas=SCHEMAS)
    await first.call_started("CA1", stream_sid=None, from_number=None, to_number=None, direction="inbound",
                             started_at=T0)
    await first.aclose()
    again = await Store.open(db_target, schemas=SCHEMAS)
    assert [c.call_sid for c in await again.list_calls()] == ["CA1"]
    await again.aclose()
    if isinstance(db_target, str):
        with psycopg.connect(db_target, autocommit=True) as conn:
            conn.execute("UPDATE voicebridge_schema SET version = version + 5")
    else:
        conn = sqlite3.connect(db_target)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
        conn.close()
    with pytest.raises(StoreError, match="newer than this voicebridge"):
        await Store.open(db_target, schemas=SCHEMAS)


async def test_postgres_password_never_shows_in_errors() -> None:
    server = shared_server()
    with pytest.raises(StoreError) as info:
        await Store.open(f"postgresql://nobody:s3cret-pw@127.0.0.1:{server.port}/no_such_db")
    assert "s3cret-pw" not in str(info.value) and "no_such_db" in str(info.value)


# -- the same behaviour on both ---------------------------------------------------------


async def test_calls_transcripts_and_cost(store: Store) -> None:
    await store.call_started("CA1", stream_sid="MZ1", from_number="+15550100111", to_number="+15550100222",
                             direction="inbound", started_at=T0)
    with pytest.raises(StoreError, match="already recorded"):
        await store.call_started("CA1", stream_sid=None, from_number=None, to_number=None, direction="inbound",
                                 started_at=T0)
    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(lambda i=i: store.add_transcript("CA1", role="caller", text=f"line {i}",
                                                                item_id=None, at=T0))
    await store.call_ended("CA1", outcome="completed", ended_at=T0 + timedelta(minutes=2),
                           cost_usd=Decimal("0.123456"), cost_details={"audio_in_s": 12})
    [call] = await store.list_calls()
    assert call.outcome == "completed" and call.cost_usd == Decimal("0.123456") and call.started_at == T0
    assert [t.seq for t in await store.transcript("CA1")] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(StoreError, match="no call CA9"):
        await store.call_ended("CA9", outcome="x", ended_at=T0, cost_usd=None, cost_details=None)


async def test_an_order_commits_with_its_items_and_outbox_row(store: Store) -> None:
    first = await save_order(store, "CA1", confirmed_order("Sam"), T0)
    second = await save_order(store, "CA2", confirmed_order("Kim"), T0)
    assert second == first + 1
    detail = await order_detail(store, first)
    assert detail is not None and detail.customer == "Sam" and len(detail.items) == 2
    box = await outbox_for_order(store, first)
    assert box is not None and box.state == "pending" and box.event == "order.created"


async def test_a_failed_commit_leaves_nothing(store: Store) -> None:
    def half(tx: Any) -> None:
        tx.insert("INSERT INTO orders (created_at, customer, fulfillment, subtotal_cents, tax_cents, total_cents,"
                  " payload) VALUES (?, ?, 'pickup', 0, 0, 0, '{}')", ("2025-05-02T18:00:00.000000Z", "Sam"))
        tx.enqueue("order.created", "order:1", {"order_id": 1})
        raise RuntimeError("the commit fails half-way")

    with pytest.raises(RuntimeError):
        await store.commit(half, now=T0)
    counts = await store.read(lambda tx: [tx.execute(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]
                                          for t in ("orders", "outbox")])
    assert counts == [0, 0]


async def test_a_claimed_row_is_not_claimed_again_until_its_lease_runs_out(store: Store) -> None:
    order_id = await save_order(store, "CA1", confirmed_order(), T0)
    row = await store.claim_due(T0, owner="a", lease_s=30)
    assert row is not None and row.subject == f"order:{order_id}" and row.claimed_by == "a"
    assert await store.claim_due(T0 + timedelta(seconds=29), owner="b", lease_s=30) is None
    assert await store.next_due_time() == T0 + timedelta(seconds=30)
    taken = await store.claim_due(T0 + timedelta(seconds=31), owner="b", lease_s=30)  # "a" died
    assert taken is not None and taken.id == row.id and taken.claimed_by == "b"
    assert not await store.mark_delivered(row.id, delivered_at=T0, claimed_by="a")  # a's claim is gone
    assert await store.mark_retry(row.id, next_attempt_at=T0 + timedelta(minutes=1), error="HTTP 500",
                                  claimed_by="b")
    again = await store.claim_due(T0 + timedelta(minutes=1), owner="a", lease_s=30)
    assert again is not None and again.attempts == 1
    assert await store.release_claim(again.id, claimed_by="a")
    last = await store.claim_due(T0 + timedelta(minutes=1), owner="c", lease_s=30)
    assert last is not None and await store.mark_delivered(last.id, delivered_at=T0, claimed_by="c")
    box = await outbox_for_order(store, order_id)
    assert box is not None and box.state == "delivered" and box.claimed_by is None and box.attempts == 2


async def test_concurrent_claimers_never_take_the_same_row(store: Store, db_target: Path | str) -> None:
    for i in range(12):
        await save_order(store, f"CA{i}", confirmed_order(f"N{i}"), T0)
    other = await Store.open(db_target, schemas=SCHEMAS)
    taken: list[int] = []

    async def claimer(s: Store, owner: str) -> None:
        while (row := await s.claim_due(T0, owner=owner, lease_s=60)) is not None:
            taken.append(row.id)

    try:
        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(claimer, store, f"one-{n}")
                nursery.start_soon(claimer, other, f"two-{n}")
    finally:
        await other.aclose()
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 12


async def test_a_token_is_redeemed_once_across_stores(store: Store, db_target: Path | str) -> None:
    other = await Store.open(db_target)
    try:
        expires = T0 + timedelta(minutes=5)
        results = []
        async with trio.open_nursery() as nursery:
            for s in (store, other, store, other):
                nursery.start_soon(lambda s=s: _append(results, s.redeem_token("h1", expires, now=T0)))
        assert sorted(results) == [False, False, False, True]
        assert await other.redeem_token("h2", expires, now=T0)
        # past its expiry the entry is cleaned up (the caller refuses an expired token by its signature)
        assert await store.redeem_token("h3", expires, now=expires + timedelta(seconds=1))
        left = await store.read(lambda tx: [r["token_hash"] for r in tx.execute(
            "SELECT token_hash FROM redeemed_tokens ORDER BY token_hash")])
        assert left == ["h3"]
    finally:
        await other.aclose()


async def _append(results: list[bool], awaitable: Any) -> None:
    results.append(await awaitable)


async def test_live_calls_are_shared_and_stale_ones_expire(store: Store, db_target: Path | str) -> None:
    other = await Store.open(db_target)
    try:
        await store.live_call_upsert("CA1", state="greeting", started_at=T0, business="pizza", now=T0,
                                     summary={"items": 0})
        await other.live_call_upsert("CA2", state="ordering", started_at=T0 + timedelta(seconds=5),
                                     business="salon", now=T0)
        await store.live_call_upsert("CA1", state="confirming", started_at=T0, business="pizza",
                                     now=T0 + timedelta(seconds=60), summary={"items": 2})
        listed = await other.live_calls(now=T0 + timedelta(seconds=61))
        assert [(c.call_sid, c.state, c.instance) for c in listed] == [
            ("CA1", "confirming", store.instance_id), ("CA2", "ordering", other.instance_id)]
        assert listed[0].summary == {"items": 2}
        assert [c.call_sid for c in await store.live_calls(business="salon", now=T0 + timedelta(seconds=61))] == ["CA2"]
        # the process carrying CA2 stops beating; CA1's keeps going
        assert await store.live_calls_heartbeat(now=T0 + timedelta(seconds=120)) == 1
        assert [c.call_sid for c in await other.live_calls(now=T0 + timedelta(seconds=150))] == ["CA1"]
        assert await store.live_call_remove("CA1") and not await store.live_call_remove("CA1")
        assert await other.live_calls(now=T0 + timedelta(seconds=150)) == []
    finally:
        await other.aclose()


async def test_connections_the_server_dropped_are_replaced_without_an_error() -> None:
    """A database restart or failover drops the pool's connections: the next operations open new
    ones and succeed (a statement is retried only when the server never saw it)."""
    url = shared_server().new_database()
    store = await Store.open(url, schemas=SCHEMAS)
    try:
        async with trio.open_nursery() as nursery:  # several calls at once: the pool opens several connections
            for i in range(1, 5):
                nursery.start_soon(lambda i=i: store.call_started(
                    f"CA{i}", stream_sid=None, from_number=None, to_number=None, direction="inbound",
                    started_at=T0 + timedelta(seconds=i)))
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                   " WHERE application_name = 'voicebridge'").fetchall()
        assert killed and all(k[0] for k in killed)
        await store.call_ended("CA1", outcome="completed", ended_at=T0, cost_usd=None, cost_details=None)
        order_id = await save_order(store, "CA1", confirmed_order(), T0)
        assert [c.outcome for c in await store.list_calls()] == [None, None, None, "completed"] and order_id == 1
    finally:
        await store.aclose()
