"""SQLite storage: calls, transcripts, confirmed orders and the webhook outbox.

One connection in WAL mode. Every public method is async and runs its SQL in a worker
thread (`trio.to_thread.run_sync`), one at a time behind a lock, so a slow disk never
blocks a call. A confirmed order, its items and its outbox row commit in one transaction.

The schema is a list of migrations applied in order, each in its own transaction, with
the version kept in `PRAGMA user_version`. A database written by a newer voicebridge
refuses to open. Datetimes are stored as ISO-8601 UTC text (`2025-01-31T18:04:05.000000Z`).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import attrs
import trio

from voicebridge.domain.menu import Menu
from voicebridge.domain.order import FULFILLMENTS, Order, OrderError

T = TypeVar("T")

ROLES = ("caller", "assistant")
DIRECTIONS = ("inbound", "outbound", "outbound-api", "outbound-dial")  # Twilio's Direction values
OUTBOX_STATES = ("pending", "delivered", "dead")
BUSY_TIMEOUT_MS = 5_000
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# Each migration is a list of statements run in one transaction; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            call_sid TEXT PRIMARY KEY,
            stream_sid TEXT,
            from_number TEXT,
            to_number TEXT,
            direction TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT,
            cost_usd TEXT,
            cost_details TEXT
        )""",
        """CREATE TABLE transcripts (
            id INTEGER PRIMARY KEY,
            call_sid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('caller', 'assistant')),
            text TEXT NOT NULL,
            item_id TEXT,
            at TEXT NOT NULL,
            UNIQUE (call_sid, seq)
        )""",
        """CREATE TABLE orders (
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
        "CREATE INDEX orders_by_call ON orders (call_sid)",
        """CREATE TABLE order_items (
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
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            order_id INTEGER NOT NULL REFERENCES orders (id),
            idempotency_key TEXT NOT NULL UNIQUE,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            delivered_at TEXT,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
        "CREATE INDEX outbox_by_order ON outbox (order_id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The database cannot be opened or written, or a method got a bad argument."""


# -- rows -------------------------------------------------------------------------------


@attrs.frozen
class CallRow:
    call_sid: str
    stream_sid: str | None
    from_number: str | None
    to_number: str | None
    direction: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    cost_usd: Decimal | None
    cost_details: dict[str, Any] | None


@attrs.frozen
class TranscriptRow:
    call_sid: str
    seq: int
    role: str
    text: str
    item_id: str | None
    at: datetime


@attrs.frozen
class OutboxRow:
    id: int
    order_id: int
    idempotency_key: str
    payload: str  # the exact JSON body sent, the same on every attempt
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


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
    outbox: OutboxRow | None


# -- helpers ----------------------------------------------------------------------------


def utc_text(value: datetime, name: str = "time") -> str:
    """`value` as stored: ISO-8601 UTC text; StoreError if it is not timezone-aware."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise StoreError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(timezone.utc).strftime(_TS_FORMAT)


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, _TS_FORMAT).replace(tzinfo=timezone.utc)


def _req_dt(text: str) -> datetime:
    value = _dt(text)
    assert value is not None
    return value


def _text(value: object, name: str, *, optional: bool = False, max_len: int = 10_000) -> str | None:
    """`value` checked as a non-empty string; with `optional`, None or "" give None."""
    if optional and (value is None or value == ""):
        return None
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise StoreError(f"{name} is longer than {max_len} characters")
    return value


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _outbox_row(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        id=r["id"],
        order_id=r["order_id"],
        idempotency_key=r["idempotency_key"],
        payload=r["payload"],
        state=r["state"],
        attempts=r["attempts"],
        next_attempt_at=_dt(r["next_attempt_at"]),
        last_error=r["last_error"],
        delivered_at=_dt(r["delivered_at"]),
        created_at=_req_dt(r["created_at"]),
    )


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"database {path}: cannot use WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous = FULL")  # a confirmed order survives a power cut
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    for _ in range(len(MIGRATIONS) + 1):
        with _transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {path} has schema version {version}, newer than this voicebridge "
                    f"(which knows up to {SCHEMA_VERSION}); upgrade voicebridge or use another VOICEBRIDGE_DB"
                )
            if version == SCHEMA_VERSION:
                return
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


# -- the store --------------------------------------------------------------------------


class Store:
    """The SQLite database. Open with `await Store.open(path)`; close with `aclose()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, threaded: bool) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._threaded = threaded
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path, *, threaded: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Store:
        """Open (creating and migrating) the database at `path`; its directory must exist.

        `busy_timeout_ms` is how long a write waits for another process's lock.
        `threaded=False` runs SQL on the event loop itself: only for tests on a mock clock,
        never in the daemon.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise StoreError(f"database {path}: the directory {path.parent} does not exist")
        if path.exists() and not path.is_file():
            raise StoreError(f"database {path}: not a regular file")
        try:
            if threaded:
                conn = await trio.to_thread.run_sync(_connect, path, busy_timeout_ms)
            else:
                conn = _connect(path, busy_timeout_ms)
        except sqlite3.Error as exc:
            raise StoreError(f"database {path}: {exc}") from None
        return cls(conn, path, threaded)

    async def aclose(self) -> None:
        """Close the connection (idempotent); later calls raise StoreError."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                if self._threaded:
                    await trio.to_thread.run_sync(conn.close)
                else:
                    conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"database {self.path}: the store is closed")
            try:
                if self._threaded:
                    return await trio.to_thread.run_sync(fn, conn)
                return fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from exc

    async def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can start now (for readiness checks)."""

        def check(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")

        await self._run(check)

    async def schema_version(self) -> int:
        """The database's `PRAGMA user_version`."""
        return await self._run(lambda conn: int(conn.execute("PRAGMA user_version").fetchone()[0]))

    # -- calls and transcripts

    async def call_started(
        self,
        call_sid: str,
        *,
        stream_sid: str | None,
        from_number: str | None,
        to_number: str | None,
        direction: str,
        started_at: datetime,
    ) -> None:
        """Record a new call; StoreError if `call_sid` is already recorded."""
        _text(call_sid, "call_sid", max_len=64)
        stream_sid = _text(stream_sid, "stream_sid", optional=True, max_len=64)
        from_number = _text(from_number, "from_number", optional=True, max_len=64)
        to_number = _text(to_number, "to_number", optional=True, max_len=64)
        if direction not in DIRECTIONS:
            raise StoreError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        started = utc_text(started_at, "started_at")

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO calls (call_sid, stream_sid, from_number, to_number, direction, started_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (call_sid, stream_sid, from_number, to_number, direction, started),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"call {call_sid} is already recorded") from None

        await self._run(insert)

    async def call_ended(
        self,
        call_sid: str,
        *,
        outcome: str,
        ended_at: datetime,
        cost_usd: Decimal | None,
        cost_details: dict[str, Any] | None,
    ) -> None:
        """Record how and when a call ended, and what it cost; StoreError for an unknown call."""
        _text(call_sid, "call_sid", max_len=64)
        _text(outcome, "outcome", max_len=64)
        ended = utc_text(ended_at, "ended_at")
        if cost_usd is not None and (not isinstance(cost_usd, Decimal) or not cost_usd.is_finite()):
            raise StoreError(f"cost_usd must be a finite Decimal or None, got {cost_usd!r}")
        try:
            details = None if cost_details is None else json.dumps(cost_details, sort_keys=True, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"cost_details is not JSON-able: {exc}") from None

        def update(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE calls SET ended_at = ?, outcome = ?, cost_usd = ?, cost_details = ? WHERE call_sid = ?",
                (ended, outcome, None if cost_usd is None else str(cost_usd), details, call_sid),
            )
            if cur.rowcount != 1:
                raise StoreError(f"no call {call_sid} (call_started was not recorded)")

        await self._run(update)

    async def add_transcript(
        self, call_sid: str, *, role: str, text: str, item_id: str | None, at: datetime
    ) -> None:
        """Append one utterance to a call's transcript (numbered in order)."""
        _text(call_sid, "call_sid", max_len=64)
        if role not in ROLES:
            raise StoreError(f"role must be 'caller' or 'assistant', got {role!r}")
        if not isinstance(text, str):
            raise StoreError(f"text must be a string, got {type(text).__name__}")
        item_id = _text(item_id, "item_id", optional=True, max_len=128)
        when = utc_text(at, "at")

        def insert(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                seq = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM transcripts WHERE call_sid = ?", (call_sid,)
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO transcripts (call_sid, seq, role, text, item_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (call_sid, seq, role, text, item_id, when),
                )

        await self._run(insert)

    async def list_calls(self, limit: int = 20) -> list[CallRow]:
        """The most recent calls first."""
        _limit(limit)

        def query(conn: sqlite3.Connection) -> list[CallRow]:
            rows = conn.execute("SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
            return [
                CallRow(
                    call_sid=r["call_sid"],
                    stream_sid=r["stream_sid"],
                    from_number=r["from_number"],
                    to_number=r["to_number"],
                    direction=r["direction"],
                    started_at=_req_dt(r["started_at"]),
                    ended_at=_dt(r["ended_at"]),
                    outcome=r["outcome"],
                    cost_usd=None if r["cost_usd"] is None else Decimal(r["cost_usd"]),
                    cost_details=None if r["cost_details"] is None else json.loads(r["cost_details"]),
                )
                for r in rows
            ]

        return await self._run(query)

    async def transcript(self, call_sid: str) -> list[TranscriptRow]:
        """A call's transcript in order."""
        _text(call_sid, "call_sid", max_len=64)

        def query(conn: sqlite3.Connection) -> list[TranscriptRow]:
            rows = conn.execute("SELECT * FROM transcripts WHERE call_sid = ? ORDER BY seq", (call_sid,)).fetchall()
            return [
                TranscriptRow(r["call_sid"], r["seq"], r["role"], r["text"], r["item_id"], _req_dt(r["at"]))
                for r in rows
            ]

        return await self._run(query)

    # -- orders

    async def save_confirmed_order(
        self, call_sid: str | None, order: Order, menu: Menu, *, tax_rate_bp: int, created_at: datetime
    ) -> int:
        """Store a confirmed order, its items and its pending outbox row in ONE transaction.

        Returns the new order id. The webhook payload (with `order_id`) is built here and
        stored as the exact body every delivery attempt sends.
        """
        call_sid = _text(call_sid, "call_sid", optional=True, max_len=64)
        created = utc_text(created_at, "created_at")
        missing = order.missing()
        if missing:
            raise StoreError(f"the order is not complete: missing {', '.join(missing)}")
        assert order.fulfillment in FULFILLMENTS and order.customer_name
        try:
            payload = order.to_json(menu, tax_rate_bp, call_sid=call_sid, created_at=created_at)
        except (OrderError, ValueError) as exc:
            raise StoreError(f"the order does not match the menu: {exc}") from None
        key_suffix = secrets.token_hex(8)

        def insert(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                cur = conn.execute(
                    "INSERT INTO orders (call_sid, created_at, status, customer, fulfillment, address, phone,"
                    " subtotal_cents, tax_cents, total_cents, payload)"
                    " VALUES (?, ?, 'confirmed', ?, ?, ?, ?, ?, ?, ?, '')",
                    (
                        call_sid,
                        created,
                        order.customer_name,
                        order.fulfillment,
                        payload["delivery_address"],
                        order.phone,
                        payload["subtotal_cents"],
                        payload["tax_cents"],
                        payload["total_cents"],
                    ),
                )
                order_id = cur.lastrowid
                assert order_id is not None
                body = json.dumps({**payload, "order_id": order_id}, sort_keys=True, separators=(",", ":"))
                conn.execute("UPDATE orders SET payload = ? WHERE id = ?", (body, order_id))
                conn.executemany(
                    "INSERT INTO order_items (order_id, line, item, name, size, quantity, toppings, notes,"
                    " unit_cents, line_cents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            order_id,
                            it["line"],
                            it["item"],
                            it["name"],
                            it["size"],
                            it["quantity"],
                            json.dumps([t["name"] for t in it["toppings"]]),
                            it["notes"],
                            it["unit_price_cents"],
                            it["line_total_cents"],
                        )
                        for it in payload["items"]
                    ],
                )
                conn.execute(
                    "INSERT INTO outbox (order_id, idempotency_key, payload, state, attempts, next_attempt_at,"
                    " created_at) VALUES (?, ?, ?, 'pending', 0, ?, ?)",
                    (order_id, f"order-{order_id}-{key_suffix}", body, created, created),
                )
                return order_id

        return await self._run(insert)

    async def list_orders(self, limit: int = 20) -> list[OrderRow]:
        """The most recent orders first, with their delivery state."""
        _limit(limit)

        def query(conn: sqlite3.Connection) -> list[OrderRow]:
            rows = conn.execute(
                "SELECT o.*, x.state, x.attempts, x.last_error FROM orders o"
                " LEFT JOIN outbox x ON x.order_id = o.id ORDER BY o.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                OrderRow(
                    id=r["id"],
                    call_sid=r["call_sid"],
                    created_at=_req_dt(r["created_at"]),
                    status=r["status"],
                    customer=r["customer"],
                    fulfillment=r["fulfillment"],
                    total_cents=r["total_cents"],
                    delivery_state=r["state"],
                    attempts=r["attempts"] or 0,
                    last_error=r["last_error"],
                )
                for r in rows
            ]

        return await self._run(query)

    async def get_order(self, order_id: int) -> OrderDetail | None:
        """One order with items, payload and outbox row; None if there is no such order."""
        _order_id(order_id)

        def query(conn: sqlite3.Connection) -> OrderDetail | None:
            r = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
            if r is None:
                return None
            items = conn.execute("SELECT * FROM order_items WHERE order_id = ? ORDER BY line", (order_id,)).fetchall()
            box = conn.execute("SELECT * FROM outbox WHERE order_id = ? ORDER BY id LIMIT 1", (order_id,)).fetchone()
            return OrderDetail(
                id=r["id"],
                call_sid=r["call_sid"],
                created_at=_req_dt(r["created_at"]),
                status=r["status"],
                customer=r["customer"],
                fulfillment=r["fulfillment"],
                address=r["address"],
                phone=r["phone"],
                subtotal_cents=r["subtotal_cents"],
                tax_cents=r["tax_cents"],
                total_cents=r["total_cents"],
                items=tuple(
                    OrderItemRow(
                        line=i["line"],
                        item=i["item"],
                        name=i["name"],
                        size=i["size"],
                        quantity=i["quantity"],
                        toppings=tuple(json.loads(i["toppings"])),
                        notes=i["notes"],
                        unit_cents=i["unit_cents"],
                        line_cents=i["line_cents"],
                    )
                    for i in items
                ),
                payload=json.loads(r["payload"]),
                outbox=None if box is None else _outbox_row(box),
            )

        return await self._run(query)

    # -- outbox

    async def next_due(self, now: datetime) -> OutboxRow | None:
        """The pending outbox row due soonest at or before `now`, or None."""
        at = utc_text(now, "now")

        def query(conn: sqlite3.Connection) -> OutboxRow | None:
            r = conn.execute(
                "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1",
                (at,),
            ).fetchone()
            return None if r is None else _outbox_row(r)

        return await self._run(query)

    async def next_due_time(self) -> datetime | None:
        """When the next pending row is due, or None if nothing is pending."""

        def query(conn: sqlite3.Connection) -> datetime | None:
            r = conn.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
            return _dt(r[0])

        return await self._run(query)

    async def outbox_for_order(self, order_id: int) -> OutboxRow | None:
        """The outbox row of an order, or None."""
        _order_id(order_id)

        def query(conn: sqlite3.Connection) -> OutboxRow | None:
            r = conn.execute("SELECT * FROM outbox WHERE order_id = ? ORDER BY id LIMIT 1", (order_id,)).fetchone()
            return None if r is None else _outbox_row(r)

        return await self._run(query)

    async def _update_pending(self, outbox_id: int, sql: str, params: tuple[object, ...]) -> bool:
        _order_id(outbox_id, "outbox_id")

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(sql + " WHERE id = ? AND state = 'pending'", (*params, outbox_id))
            return cur.rowcount == 1

        return await self._run(update)

    async def mark_delivered(self, outbox_id: int, *, delivered_at: datetime) -> bool:
        """A 2xx came back: the row is delivered. False if the row was not pending."""
        at = utc_text(delivered_at, "delivered_at")
        return await self._update_pending(
            outbox_id,
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, delivered_at = ?, next_attempt_at = NULL",
            (at,),
        )

    async def mark_retry(self, outbox_id: int, *, next_attempt_at: datetime, error: str) -> bool:
        """An attempt failed; try again at `next_attempt_at`. False if the row was not pending."""
        at = utc_text(next_attempt_at, "next_attempt_at")
        _text(error, "error")
        return await self._update_pending(
            outbox_id,
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?",
            (at, error[:500]),
        )

    async def mark_dead(self, outbox_id: int, *, error: str) -> bool:
        """The last allowed attempt failed: the row is dead (kept, never deleted)."""
        _text(error, "error")
        return await self._update_pending(
            outbox_id,
            "UPDATE outbox SET state = 'dead', attempts = attempts + 1, next_attempt_at = NULL, last_error = ?",
            (error[:500],),
        )

    async def resend(self, order_id: int, *, force: bool = False, now: datetime | None = None) -> bool:
        """Put an order's dead delivery (or a delivered one, with `force`) back to pending, due `now`.

        The attempt count restarts at zero; the last error is kept. Returns False when the
        delivery is in another state (already pending, or delivered without `force`);
        StoreError when the order has no delivery row.
        """
        _order_id(order_id)
        due = utc_text(now or datetime.now(timezone.utc), "now")
        states = ("dead", "delivered") if force else ("dead",)

        def update(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                r = conn.execute("SELECT id, state FROM outbox WHERE order_id = ?", (order_id,)).fetchone()
                if r is None:
                    raise StoreError(f"order #{order_id} does not exist or has no webhook delivery")
                if r["state"] not in states:
                    return False
                conn.execute(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, delivered_at = NULL"
                    " WHERE id = ?",
                    (due, r["id"]),
                )
                return True

        return await self._run(update)


def _limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise StoreError(f"limit must be a whole number from 1 to 10000, got {limit!r}")


def _order_id(value: int, name: str = "order_id") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StoreError(f"{name} must be a positive whole number, got {value!r}")


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-able")
