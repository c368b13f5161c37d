"""SQLite storage plumbing: calls, transcripts, the webhook outbox, and the jobs' own tables.

One connection in WAL mode. Every public method is async and runs its SQL in a worker
thread (`trio.to_thread.run_sync`), one at a time behind a lock, so a slow disk never
blocks a call. A job's commit (`Store.commit`) runs in ONE transaction with the outbox
events it queues, so a confirmed order or booking and its webhook delivery are never apart.

The store knows no job: each job hands its own migrations (`Job.schema`) to `Store.open`.
The engine's schema is a list of migrations applied in order, each in its own transaction,
with the version kept in `PRAGMA user_version`; each job's version is kept in the
`schema_versions` table. A database written by a newer voicebridge refuses to open.
Datetimes are stored as ISO-8601 UTC text (`2025-01-31T18:04:05.000000Z`).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import attrs
import trio


T = TypeVar("T")

ROLES = ("caller", "assistant")
DIRECTIONS = ("inbound", "outbound", "outbound-api", "outbound-dial")  # Twilio's Direction values
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
    # 2: the outbox carries any job's events (order.created, booking.created, ...) to any target
    # (the webhook, a calendar); each job's own tables are versioned in schema_versions.
    (
        """CREATE TABLE outbox_events (
            id INTEGER PRIMARY KEY,
            event TEXT NOT NULL,
            subject TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT 'webhook',
            idempotency_key TEXT NOT NULL UNIQUE,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            delivered_at TEXT,
            created_at TEXT NOT NULL
        )""",
        """INSERT INTO outbox_events (id, event, subject, target, idempotency_key, payload, state, attempts,
            next_attempt_at, last_error, delivered_at, created_at)
           SELECT id, 'order.created', 'order:' || order_id, 'webhook', idempotency_key, payload, state, attempts,
            next_attempt_at, last_error, delivered_at, created_at FROM outbox""",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_events RENAME TO outbox",
        "CREATE INDEX outbox_due ON outbox (state, target, next_attempt_at)",
        "CREATE INDEX outbox_by_subject ON outbox (subject)",
        """CREATE TABLE schema_versions (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        )""",
    ),
    # 3: stream tokens are single-use across every process sharing the database.
    (
        """CREATE TABLE redeemed_tokens (
            token_hash TEXT PRIMARY KEY,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX redeemed_tokens_expiry ON redeemed_tokens (expires_at)",
    ),
    # 4: one deployment answers for many businesses; each call, delivery and order belongs to one.
    # (`orders` is here, not in the pizza job's migrations, because migration 1 made it for every
    # database: a store opened without the job's schemas still takes the job's commits.)
    (
        "ALTER TABLE calls ADD COLUMN business TEXT NOT NULL DEFAULT 'default'",
        "CREATE INDEX calls_by_business ON calls (business, started_at)",
        "ALTER TABLE outbox ADD COLUMN business TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE orders ADD COLUMN business TEXT NOT NULL DEFAULT 'default'",
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
    business: str = "default"  # the business (slug) whose number was called


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
    event: str  # "order.created", "booking.created", ...
    subject: str  # what it is about: "order:12", "booking:3"
    target: str  # where it goes: "webhook", or another sender the daemon has (a calendar)
    idempotency_key: str
    payload: str  # the exact JSON body sent, the same on every attempt
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    business: str = "default"  # whose webhook it goes to


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
        event=r["event"],
        subject=r["subject"],
        target=r["target"],
        idempotency_key=r["idempotency_key"],
        payload=r["payload"],
        state=r["state"],
        attempts=r["attempts"],
        next_attempt_at=_dt(r["next_attempt_at"]),
        last_error=r["last_error"],
        delivered_at=_dt(r["delivered_at"]),
        created_at=_req_dt(r["created_at"]),
        business=r["business"],
    )


Schemas = Mapping[str, Sequence[Sequence[str]]]  # component (a job's name) -> its migrations


def _connect(path: Path, busy_timeout_ms: int, schemas: Schemas) -> sqlite3.Connection:
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
        for component, migrations in schemas.items():
            _migrate_component(conn, path, component, migrations)
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


def _migrate_component(conn: sqlite3.Connection, path: Path, component: str, migrations: Sequence[Sequence[str]]) -> None:
    """Apply a job's own migrations after the engine's; its version lives in schema_versions."""
    for _ in range(len(migrations) + 1):
        with _transaction(conn):
            row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
            version = 0 if row is None else row[0]
            if version > len(migrations):
                raise StoreError(
                    f"database {path}: the {component} tables have schema version {version}, newer than this "
                    f"voicebridge (which knows up to {len(migrations)}); upgrade voicebridge or use another VOICEBRIDGE_DB"
                )
            if version == len(migrations):
                return
            for statement in migrations[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                         " ON CONFLICT (component) DO UPDATE SET version = excluded.version", (component, version + 1))


class _SqliteTransaction:
    """`voicebridge.engine.job.Transaction` on an open SQLite transaction (or a read-only connection)."""

    def __init__(self, conn: sqlite3.Connection, now: datetime, *, writable: bool, business: str = "default") -> None:
        self.business = business  # the business the task is for: jobs write it on their rows
        self._conn = conn
        self._now = utc_text(now, "now")
        self._writable = writable

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql, tuple(params))
        return [dict(r) for r in cur.fetchall()] if cur.description else []

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        if not self._writable:
            raise StoreError("a read cannot insert")
        cur = self._conn.execute(sql, tuple(params))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def enqueue(self, event: str, subject: str, payload: dict[str, Any], target: str = "webhook") -> None:
        if not self._writable:
            raise StoreError("a read cannot queue a delivery")
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
        key = f"{subject.replace(':', '-')}-{secrets.token_hex(8)}"
        self._conn.execute(
            "INSERT INTO outbox (event, subject, target, idempotency_key, payload, state, attempts, next_attempt_at,"
            " created_at, business) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (event, subject, target, key, body, self._now, self._now, self.business),
        )


# An outbox row whose subject has no older pending row for its target.
_HEAD_OF_SUBJECT = (" AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' AND p.target = o.target"
                    " AND p.subject = o.subject AND p.id < o.id)")


# -- the store --------------------------------------------------------------------------


class Store:
    """The SQLite database. Open with `await Store.open(path)`; close with `aclose()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, threaded: bool) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._threaded = threaded
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path, *, threaded: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                   schemas: Schemas | None = None) -> Store:
        """Open (creating and migrating) the database at `path`; its directory must exist.

        `schemas` are the jobs' own migrations (`{job.name: job.schema}`), applied after the engine's.
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
                conn = await trio.to_thread.run_sync(_connect, path, busy_timeout_ms, dict(schemas or {}))
            else:
                conn = _connect(path, busy_timeout_ms, dict(schemas or {}))
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
        business: str = "default",
    ) -> None:
        """Record a new call; StoreError if `call_sid` is already recorded."""
        _text(business, "business", max_len=64)
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
                    "INSERT INTO calls (call_sid, stream_sid, from_number, to_number, direction, started_at, business)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (call_sid, stream_sid, from_number, to_number, direction, started, business),
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

    async def list_calls(self, limit: int = 20, *, business: str | None = None) -> list[CallRow]:
        """The most recent calls first (only `business`'s calls, if given)."""
        _limit(limit)

        def query(conn: sqlite3.Connection) -> list[CallRow]:
            if business is None:
                rows = conn.execute("SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = conn.execute("SELECT * FROM calls WHERE business = ? ORDER BY started_at DESC LIMIT ?",
                                    (business, limit)).fetchall()
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
                    business=r["business"],
                )
                for r in rows
            ]

        return await self._run(query)

    async def call_outcome(self, call_sid: str) -> tuple[bool, str | None]:
        """(whether the call is recorded, its outcome or None while it runs): any process's calls."""
        _text(call_sid, "call_sid", max_len=64)

        def query(conn: sqlite3.Connection) -> tuple[bool, str | None]:
            r = conn.execute("SELECT outcome FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
            return (False, None) if r is None else (True, r["outcome"])

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

    # -- a job's commit, and its reads

    async def commit(self, fn: Callable[[_SqliteTransaction], T], *, now: datetime | None = None,
                     business: str = "default") -> T:
        """Run a job's commit in ONE transaction: its rows and the outbox events it queues land together
        or not at all. `fn` runs in the store's thread; an exception rolls everything back.
        `business` is the business the task is for (`tx.business`; its outbox events go to its webhook)."""
        at = now or datetime.now(timezone.utc)
        _text(business, "business", max_len=64)

        def run(conn: sqlite3.Connection) -> T:
            with _transaction(conn):
                return fn(_SqliteTransaction(conn, at, writable=True, business=business))

        return await self._run(run)

    async def read(self, fn: Callable[[_SqliteTransaction], T]) -> T:
        """Run a job's query (`fn` sees a Transaction that can only read)."""

        def run(conn: sqlite3.Connection) -> T:
            return fn(_SqliteTransaction(conn, datetime.now(timezone.utc), writable=False))

        return await self._run(run)

    # -- single-use tokens, shared by every process on the database

    async def redeem_token(self, token_hash: str, expires_at: datetime) -> bool:
        """Record a stream token (by its hash) as used until `expires_at`; False if it already was.

        One INSERT: whichever process redeems first wins, the others see False. Expired
        records are pruned in the same transaction (a token is refused as expired anyway).
        """
        _text(token_hash, "token_hash", max_len=128)
        until = utc_text(expires_at, "expires_at")
        now = utc_text(datetime.now(timezone.utc), "now")

        def insert(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                conn.execute("DELETE FROM redeemed_tokens WHERE expires_at < ?", (now,))
                cur = conn.execute("INSERT OR IGNORE INTO redeemed_tokens (token_hash, expires_at) VALUES (?, ?)",
                                   (token_hash, until))
                return cur.rowcount == 1

        return await self._run(insert)

    # -- outbox

    async def next_due(self, now: datetime, targets: Sequence[str] = ("webhook",), *,
                       in_subject_order: bool = False, businesses: Sequence[str] | None = None) -> OutboxRow | None:
        """The pending outbox row for one of `targets` (and of `businesses`, if given) due soonest
        at or before `now`, or None.

        With `in_subject_order`, a row is not due while an older pending row about the same
        subject and target waits (a booking's calendar writes land in the order they were made).
        """
        at = utc_text(now, "now")
        marks = ", ".join("?" for _ in targets)
        head = _HEAD_OF_SUBJECT if in_subject_order else ""
        only, whose = _businesses_clause(businesses)

        def query(conn: sqlite3.Connection) -> OutboxRow | None:
            r = conn.execute(
                f"SELECT * FROM outbox o WHERE state = 'pending' AND target IN ({marks}){only} AND next_attempt_at <= ?{head}"
                " ORDER BY next_attempt_at, id LIMIT 1",
                (*targets, *whose, at),
            ).fetchone()
            return None if r is None else _outbox_row(r)

        return await self._run(query)

    async def next_due_time(self, targets: Sequence[str] = ("webhook",), *,
                            in_subject_order: bool = False, businesses: Sequence[str] | None = None) -> datetime | None:
        """When the next pending row for one of `targets` (and `businesses`) is due, or None if none is pending."""
        marks = ", ".join("?" for _ in targets)
        head = _HEAD_OF_SUBJECT if in_subject_order else ""
        only, whose = _businesses_clause(businesses)

        def query(conn: sqlite3.Connection) -> datetime | None:
            r = conn.execute(f"SELECT MIN(next_attempt_at) FROM outbox o WHERE state = 'pending'"
                             f" AND target IN ({marks}){only}{head}", (*targets, *whose)).fetchone()
            return _dt(r[0])

        return await self._run(query)

    async def outbox_for(self, subject: str, target: str = "webhook") -> OutboxRow | None:
        """The first outbox row about `subject` ("order:12") for `target`, or None."""
        _text(subject, "subject", max_len=200)

        def query(conn: sqlite3.Connection) -> OutboxRow | None:
            r = conn.execute("SELECT * FROM outbox WHERE subject = ? AND target = ? ORDER BY id LIMIT 1",
                             (subject, target)).fetchone()
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

    async def resend(self, subject: str, *, force: bool = False, now: datetime | None = None,
                     target: str = "webhook") -> bool:
        """Put the dead delivery about `subject` (or a delivered one, with `force`) back to pending, due `now`.

        The attempt count restarts at zero; the last error is kept. Returns False when the
        delivery is in another state (already pending, or delivered without `force`);
        StoreError when there is no delivery about `subject`.
        """
        _text(subject, "subject", max_len=200)
        due = utc_text(now or datetime.now(timezone.utc), "now")
        states = ("dead", "delivered") if force else ("dead",)

        def update(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                r = conn.execute("SELECT id, state FROM outbox WHERE subject = ? AND target = ? ORDER BY id LIMIT 1",
                                 (subject, target)).fetchone()
                if r is None:
                    kind, _, number = subject.partition(":")
                    raise StoreError(f"{kind} #{number} does not exist or has no webhook delivery")
                if r["state"] not in states:
                    return False
                conn.execute(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, delivered_at = NULL"
                    " WHERE id = ?",
                    (due, r["id"]),
                )
                return True

        return await self._run(update)


def _businesses_clause(businesses: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    if businesses is None:
        return "", ()
    if not businesses:
        return " AND 0", ()
    return f" AND business IN ({', '.join('?' for _ in businesses)})", tuple(businesses)


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
