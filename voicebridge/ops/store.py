"""Storage plumbing: calls, transcripts, the outbox, the shared live state, and the jobs' own tables.

Two engines behind one API (`voicebridge.ops.db`): an SQLite file (the embedded default: one
connection in WAL mode) or PostgreSQL (`VOICEBRIDGE_DB=postgresql://...`, for several processes
or machines). Every public method is async and runs its SQL in a worker thread
(`trio.to_thread.run_sync`), so a slow disk or network never blocks a call. A job's commit
(`Store.commit`) runs in ONE transaction with the outbox events it queues, so a confirmed order
or booking and its webhook delivery are never apart.

The store knows no job: each job hands its own migrations (`Job.schema`) to `Store.open`.
The engine's schema is ONE list of migrations for both engines (written in SQLite's DDL and
translated for PostgreSQL, see `voicebridge.ops.db`), applied in order, each in its own
transaction, with the version kept in `PRAGMA user_version` (PostgreSQL: a one-row table);
each job's version is kept in the `schema_versions` table. A database written by a newer
voicebridge refuses to open. Datetimes are stored as ISO-8601 UTC text
(`2025-01-31T18:04:05.000000Z`), which sorts as time in both engines.

Shared by every process on one database: the outbox's claims (a row being delivered is
leased to one process, `claim_due`), redeemed stream tokens (`redeem_token`) and the
live-call registry (`live_call_upsert`, `live_calls`).

Why one module of this length: one public API for every table the engine owns (calls,
transcripts, the outbox and its claims, tokens, the live-call registry), engine-neutral; the
engines' differences are in db_sqlite.py and db_postgres.py.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import attrs

from voicebridge.ops.db import Backend, Conflict, Sql, StoreError, is_postgres_url
from voicebridge.ops.db_sqlite import SqliteBackend

__all__ = ["Store", "StoreError", "Conflict", "MIGRATIONS", "SCHEMA_VERSION", "CallRow", "TranscriptRow",
           "OutboxRow", "LiveCallRow", "RecordingRow", "utc_text"]


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
    # 3: several processes (or machines, on PostgreSQL) share one database: an outbox row being
    # delivered is leased to one of them; a stream token is redeemed once across all of them;
    # every live call is listed for the staff page, whichever process carries it.
    (
        "ALTER TABLE outbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE outbox ADD COLUMN lease_until TEXT",
        """CREATE TABLE redeemed_tokens (
            token_hash TEXT PRIMARY KEY,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX redeemed_tokens_expiry ON redeemed_tokens (expires_at)",
        """CREATE TABLE live_calls (
            call_sid TEXT PRIMARY KEY,
            business TEXT,
            instance TEXT NOT NULL,
            state TEXT NOT NULL,
            started_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            summary TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX live_calls_heartbeat ON live_calls (heartbeat_at)",
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
    # 5: a caller's voicemail (the <Record> fallback) lives on the call's row.
    (
        "ALTER TABLE calls ADD COLUMN voicemail_url TEXT",
        "ALTER TABLE calls ADD COLUMN voicemail_duration_s INTEGER",
    ),
    # 6: Twilio's recordings of calls (VOICEBRIDGE_AUDIO_RECORDING=twilio): one row per recording, its
    # download queued in the outbox (target "recording"); the file itself lives in the recordings folder.
    (
        """CREATE TABLE call_recordings (
            recording_sid TEXT PRIMARY KEY,
            call_sid TEXT NOT NULL,
            business TEXT NOT NULL DEFAULT 'default',
            status TEXT NOT NULL,
            duration_s INTEGER,
            channels INTEGER,
            received_at TEXT NOT NULL,
            file_name TEXT,
            file_bytes INTEGER,
            downloaded_at TEXT
        )""",
        "CREATE INDEX call_recordings_by_call ON call_recordings (call_sid)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


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
    voicemail_url: str | None = None
    voicemail_duration_s: int | None = None


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
    claimed_by: str | None = None  # the process delivering it now (while lease_until is ahead)
    lease_until: datetime | None = None
    business: str = "default"  # whose webhook it goes to


@attrs.frozen
class RecordingRow:
    """A Twilio recording of a call, as its status callback told it; `file_name` (relative to the
    recordings folder) once downloaded."""

    recording_sid: str
    call_sid: str
    business: str
    status: str  # Twilio's RecordingStatus: completed, absent, failed
    duration_s: int | None
    channels: int | None
    received_at: datetime
    file_name: str | None
    file_bytes: int | None
    downloaded_at: datetime | None


RECORDING_DOWNLOAD = "recording.download"  # the outbox event (target "recording") that fetches a recording


@attrs.frozen
class LiveCallRow:
    """A call in progress on some process: what the staff page lists."""

    call_sid: str
    business: str | None
    instance: str  # the process carrying it (Store.instance_id)
    state: str
    started_at: datetime
    heartbeat_at: datetime
    summary: dict[str, Any]


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


def _outbox_row(r: Mapping[str, Any]) -> OutboxRow:
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
        claimed_by=r.get("claimed_by"),
        lease_until=_dt(r.get("lease_until")),
        business=r.get("business") or "default",
    )


Schemas = Mapping[str, Sequence[Sequence[str]]]  # component (a job's name) -> its migrations


def _migrate(sql: Sql, name: str) -> None:
    for _ in range(len(MIGRATIONS) + 1):
        with sql.transaction():
            sql.schema_lock()
            version = sql.engine_version()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {name} has schema version {version}, newer than this voicebridge "
                    f"(which knows up to {SCHEMA_VERSION}); upgrade voicebridge or use another VOICEBRIDGE_DB"
                )
            if version == SCHEMA_VERSION:
                return
            for statement in MIGRATIONS[version]:
                sql.execute(sql.ddl(statement))
            sql.set_engine_version(version + 1)


def _migrate_component(sql: Sql, name: str, component: str, migrations: Sequence[Sequence[str]]) -> None:
    """Apply a job's own migrations after the engine's; its version lives in schema_versions."""
    for _ in range(len(migrations) + 1):
        with sql.transaction():
            sql.schema_lock()
            rows = sql.execute("SELECT version FROM schema_versions WHERE component = ?", (component,))
            version = 0 if not rows else int(rows[0]["version"])
            if version > len(migrations):
                raise StoreError(
                    f"database {name}: the {component} tables have schema version {version}, newer than this "
                    f"voicebridge (which knows up to {len(migrations)}); upgrade voicebridge or use another VOICEBRIDGE_DB"
                )
            if version == len(migrations):
                return
            for statement in migrations[version]:
                sql.execute(sql.ddl(statement))
            sql.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                        " ON CONFLICT (component) DO UPDATE SET version = excluded.version", (component, version + 1))


class StoreTransaction:
    """`voicebridge.engine.job.Transaction` on an open transaction (or a read-only connection), either engine."""

    def __init__(self, sql: Sql, now: datetime, *, writable: bool, business: str = "default") -> None:
        self.business = business  # the business the task is for: jobs write it on their rows
        self._sql = sql
        self._now = utc_text(now, "now")
        self._writable = writable
        self.dialect = sql.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._sql.execute(sql, params)

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        if not self._writable:
            raise StoreError("a read cannot insert")
        return self._sql.insert(sql, params)

    def enqueue(self, event: str, subject: str, payload: dict[str, Any], target: str = "webhook") -> None:
        if not self._writable:
            raise StoreError("a read cannot queue a delivery")
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
        key = f"{subject.replace(':', '-')}-{secrets.token_hex(8)}"
        self._sql.execute(
            "INSERT INTO outbox (event, subject, target, idempotency_key, payload, state, attempts, next_attempt_at,"
            " created_at, business) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (event, subject, target, key, body, self._now, self._now, self.business),
        )


_SqliteTransaction = StoreTransaction  # the name other modules used before PostgreSQL


# An outbox row whose subject has no older pending row for its target.
_HEAD_OF_SUBJECT = (" AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' AND p.target = o.target"
                    " AND p.subject = o.subject AND p.id < o.id)")
# A row nobody is delivering now: never claimed, or its claimer's lease ran out (it crashed or hung).
_UNCLAIMED = " AND (o.lease_until IS NULL OR o.lease_until <= ?)"

LIVE_STALE_S = 90.0  # a live call whose process sent no heartbeat for this long is gone (it crashed)


def new_instance_id() -> str:
    """This process's name in claims and the live-call registry: host, pid and a random tail."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


# -- the store --------------------------------------------------------------------------


class Store:
    """The database. Open with `await Store.open(path_or_url)`; close with `aclose()`."""

    def __init__(self, backend: Backend, path: Path | str) -> None:
        self.path = path  # the SQLite file, or the PostgreSQL URL without its password
        self.dialect = backend.dialect
        self.instance_id = new_instance_id()
        self._backend = backend

    @classmethod
    async def open(cls, path: Path | str, *, threaded: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                   schemas: Schemas | None = None) -> Store:
        """Open (creating and migrating) the database: an SQLite file at `path` (its directory must
        exist; "sqlite:///path" works too) or a PostgreSQL URL ("postgresql://user@host/db").

        `schemas` are the jobs' own migrations (`{job.name: job.schema}`), applied after the engine's.
        `busy_timeout_ms` is how long a write waits for another process's lock.
        `threaded=False` runs SQL on the event loop itself: only for tests on a mock clock,
        never in the daemon.
        """
        backend: Backend
        if is_postgres_url(path):
            from voicebridge.ops.db_postgres import PostgresBackend  # psycopg only when it is used

            backend = await PostgresBackend.open(str(path), threaded=threaded, busy_timeout_ms=busy_timeout_ms)
            where: Path | str = backend.name
        else:
            text = str(path)
            where = Path(text[len("sqlite://"):]) if text.startswith("sqlite:///") else Path(path)
            backend = await SqliteBackend.open(where, threaded=threaded, busy_timeout_ms=busy_timeout_ms)
        components = dict(schemas or {})

        def migrate(sql: Sql) -> None:
            _migrate(sql, backend.name)
            for component, migrations in components.items():
                _migrate_component(sql, backend.name, component, migrations)

        try:
            await backend.run(migrate)
        except BaseException:
            await backend.aclose()
            raise
        return cls(backend, where)

    async def aclose(self) -> None:
        """Close the connection(s) (idempotent); later calls raise StoreError."""
        await self._backend.aclose()

    async def _run(self, fn: Callable[[Sql], T]) -> T:
        return await self._backend.run(fn)

    async def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can start now (for readiness checks)."""

        def check(sql: Sql) -> None:
            with sql.transaction():
                sql.execute("SELECT COUNT(*) AS n FROM schema_versions")
                if sql.dialect == "postgresql":  # a standby (after a failover, a stale DNS name) takes no writes
                    ro = sql.execute("SELECT current_setting('transaction_read_only') AS ro")[0]["ro"]
                    if ro == "on":
                        raise StoreError(f"database {self.path}: read-only (a standby, or default_transaction_read_only)")

        await self._run(check)

    async def schema_version(self) -> int:
        """The engine schema's version (SQLite: `PRAGMA user_version`)."""
        return await self._run(lambda sql: sql.engine_version())

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

        def insert(sql: Sql) -> None:
            try:
                sql.execute(
                    "INSERT INTO calls (call_sid, stream_sid, from_number, to_number, direction, started_at, business)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (call_sid, stream_sid, from_number, to_number, direction, started, business),
                )
            except Conflict:
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

        def update(sql: Sql) -> None:
            count = sql.rowcount(
                "UPDATE calls SET ended_at = ?, outcome = ?, cost_usd = ?, cost_details = ? WHERE call_sid = ?",
                (ended, outcome, None if cost_usd is None else str(cost_usd), details, call_sid),
            )
            if count != 1:
                raise StoreError(f"no call {call_sid} (call_started was not recorded)")

        await self._run(update)

    async def add_transcript(
        self, call_sid: str, *, role: str, text: str, item_id: str | None, at: datetime, position: int | None = None
    ) -> None:
        """Add one utterance to a call's transcript.

        `position`: where it was spoken in the call (1, 2, ...), so a line that arrives late (the
        caller's transcript comes after the answer's) still reads in speaking order; None appends it
        after the last line. A position already taken is a StoreError.
        """
        if position is not None and (isinstance(position, bool) or not isinstance(position, int) or position < 1):
            raise StoreError(f"position must be a whole number from 1, got {position!r}")
        _text(call_sid, "call_sid", max_len=64)
        if role not in ROLES:
            raise StoreError(f"role must be 'caller' or 'assistant', got {role!r}")
        if not isinstance(text, str):
            raise StoreError(f"text must be a string, got {type(text).__name__}")
        item_id = _text(item_id, "item_id", optional=True, max_len=128)
        when = utc_text(at, "at")

        def insert(sql: Sql) -> None:
            with sql.transaction():
                sql.serialize(f"transcript:{call_sid}")
                seq = position if position is not None else sql.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM transcripts WHERE call_sid = ?", (call_sid,)
                )[0]["seq"]
                if position is not None and sql.execute(
                        "SELECT 1 AS taken FROM transcripts WHERE call_sid = ? AND seq = ?", (call_sid, seq)):
                    raise StoreError(f"transcript position {seq} of this call is already taken")
                sql.execute(
                    "INSERT INTO transcripts (call_sid, seq, role, text, item_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (call_sid, seq, role, text, item_id, when),
                )

        await self._run(insert)

    async def voicemail_received(self, call_sid: str, *, url: str, duration_s: int | None, from_number: str | None,
                                 business: str = "default", now: datetime | None = None) -> bool:
        """Store a caller's voicemail on the call's row and queue `voicemail.received` for the business.

        True if this was news; False if the call already has this voicemail (Twilio retried a callback):
        one row, one delivery. A call the AI never took (it was down) gets its row here, for
        `business`; a call already recorded keeps its own business (whose webhook is told).
        """
        _text(call_sid, "call_sid", max_len=64)
        _text(url, "url", max_len=2000)
        from_number = _text(from_number, "from_number", optional=True, max_len=64)
        if duration_s is not None and not 0 <= duration_s <= 86_400:
            raise StoreError(f"voicemail duration must be 0 to 86400 seconds, got {duration_s}")
        at = now or datetime.now(timezone.utc)

        def store(tx: StoreTransaction) -> bool:
            rows = tx.execute("SELECT from_number, voicemail_url, business FROM calls WHERE call_sid = ?",
                              (call_sid,))
            if rows and rows[0]["voicemail_url"] is not None:
                return False
            if rows:
                tx.business = rows[0]["business"]
                tx.execute("UPDATE calls SET voicemail_url = ?, voicemail_duration_s = ?,"
                           " from_number = COALESCE(from_number, ?) WHERE call_sid = ?",
                           (url, duration_s, from_number, call_sid))
                caller = rows[0]["from_number"] or from_number
            else:
                tx.execute("INSERT INTO calls (call_sid, from_number, direction, started_at, outcome, voicemail_url,"
                           " voicemail_duration_s, business) VALUES (?, ?, 'inbound', ?, 'voicemail', ?, ?, ?)",
                           (call_sid, from_number, utc_text(at), url, duration_s, business))
                caller = from_number
            tx.enqueue("voicemail.received", f"voicemail:{call_sid}",
                       {"event": "voicemail.received", "call_sid": call_sid, "from": caller,
                        "recording_url": url, "duration_s": duration_s, "received_at": utc_text(at)})
            return True

        return await self.commit(store, now=at, business=business)

    async def recording_received(self, recording_sid: str, call_sid: str, *, status: str, duration_s: int | None,
                                 channels: int | None, business: str = "default",
                                 now: datetime | None = None) -> bool:
        """Keep a recording's status callback; a completed one queues its download (outbox target
        "recording", event `recording.download`) in the same transaction.

        True if this was news; False for a repeat of a callback already kept (Twilio retries): one
        row, one download. The recording belongs to its call's business when the call is recorded
        here, else to `business`.
        """
        _text(recording_sid, "recording_sid", max_len=64)
        _text(call_sid, "call_sid", max_len=64)
        _text(status, "status", max_len=20)
        for value, name in ((duration_s, "duration_s"), (channels, "channels")):
            if value is not None and not 0 <= value <= 86_400:
                raise StoreError(f"recording {name} must be 0 to 86400, got {value}")
        at = now or datetime.now(timezone.utc)

        def store(tx: StoreTransaction) -> bool:
            known = tx.execute("SELECT status FROM call_recordings WHERE recording_sid = ?", (recording_sid,))
            if known and (known[0]["status"] == "completed" or status != "completed"):
                return False
            calls = tx.execute("SELECT business FROM calls WHERE call_sid = ?", (call_sid,))
            if calls:
                tx.business = calls[0]["business"]
            if known:
                tx.execute("UPDATE call_recordings SET status = ?, duration_s = ?, channels = ?, received_at = ?"
                           " WHERE recording_sid = ?", (status, duration_s, channels, utc_text(at), recording_sid))
            else:
                tx.execute("INSERT INTO call_recordings (recording_sid, call_sid, business, status, duration_s, channels,"
                           " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (recording_sid, call_sid, tx.business, status, duration_s, channels, utc_text(at)))
            if status == "completed":
                tx.enqueue(RECORDING_DOWNLOAD, f"recording:{recording_sid}",
                           {"recording_sid": recording_sid, "call_sid": call_sid, "business": tx.business},
                           target="recording")
            return True

        return await self.commit(store, now=at, business=business)

    async def recording_downloaded(self, recording_sid: str, *, file_name: str, file_bytes: int,
                                   at: datetime | None = None) -> None:
        """The recording's file is in the recordings folder, at `file_name` (relative to it)."""
        _text(recording_sid, "recording_sid", max_len=64)
        _text(file_name, "file_name", max_len=300)
        when = utc_text(at or datetime.now(timezone.utc), "at")

        def update(sql: Sql) -> None:
            sql.execute("UPDATE call_recordings SET file_name = ?, file_bytes = ?, downloaded_at = ?"
                        " WHERE recording_sid = ?", (file_name, file_bytes, when, recording_sid))

        await self._run(update)

    async def recordings_of(self, call_sid: str) -> list[RecordingRow]:
        """A call's Twilio recordings, oldest first."""
        _text(call_sid, "call_sid", max_len=64)

        def query(sql: Sql) -> list[RecordingRow]:
            rows = sql.execute("SELECT * FROM call_recordings WHERE call_sid = ? ORDER BY received_at, recording_sid",
                               (call_sid,))
            return [RecordingRow(r["recording_sid"], r["call_sid"], r["business"], r["status"], r["duration_s"],
                                 r["channels"], _req_dt(r["received_at"]), r["file_name"], r["file_bytes"],
                                 _dt(r["downloaded_at"])) for r in rows]

        return await self._run(query)

    async def list_calls(self, limit: int = 20, *, business: str | None = None) -> list[CallRow]:
        """The most recent calls first (only `business`'s calls, if given)."""
        _limit(limit)

        def query(sql: Sql) -> list[CallRow]:
            if business is None:
                rows = sql.execute("SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,))
            else:
                rows = sql.execute("SELECT * FROM calls WHERE business = ? ORDER BY started_at DESC LIMIT ?",
                                   (business, limit))
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
                    voicemail_url=r.get("voicemail_url"),
                    voicemail_duration_s=r.get("voicemail_duration_s"),
                )
                for r in rows
            ]

        return await self._run(query)

    async def call_outcome(self, call_sid: str) -> tuple[bool, str | None]:
        """(whether the call is recorded, its outcome or None while it runs): any process's calls."""
        _text(call_sid, "call_sid", max_len=64)

        def query(sql: Sql) -> tuple[bool, str | None]:
            rows = sql.execute("SELECT outcome FROM calls WHERE call_sid = ?", (call_sid,))
            return (False, None) if not rows else (True, rows[0]["outcome"])

        return await self._run(query)

    async def transcript(self, call_sid: str) -> list[TranscriptRow]:
        """A call's transcript in order."""
        _text(call_sid, "call_sid", max_len=64)

        def query(sql: Sql) -> list[TranscriptRow]:
            rows = sql.execute("SELECT * FROM transcripts WHERE call_sid = ? ORDER BY seq", (call_sid,))
            return [
                TranscriptRow(r["call_sid"], r["seq"], r["role"], r["text"], r["item_id"], _req_dt(r["at"]))
                for r in rows
            ]

        return await self._run(query)

    # -- a job's commit, and its reads

    async def commit(self, fn: Callable[[StoreTransaction], T], *, now: datetime | None = None,
                     business: str = "default") -> T:
        """Run a job's commit in ONE transaction: its rows and the outbox events it queues land together
        or not at all. `fn` runs in the store's thread; an exception rolls everything back. Commits
        never overlap, in any number of processes: what `fn` reads stays true until it writes.
        `business` is the business the task is for (`tx.business`; its outbox events go to its webhook)."""
        at = now or datetime.now(timezone.utc)
        _text(business, "business", max_len=64)

        def run(sql: Sql) -> T:
            with sql.transaction():
                # Jobs check-then-write (is the slot still free?): commits run one at a time on every
                # engine, as SQLite's single writer does (on PostgreSQL a lock held to the commit)
                sql.serialize("job-commit")
                return fn(StoreTransaction(sql, at, writable=True, business=business))

        return await self._run(run)

    async def read(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Run a job's query (`fn` sees a Transaction that can only read)."""

        def run(sql: Sql) -> T:
            return fn(StoreTransaction(sql, datetime.now(timezone.utc), writable=False))

        return await self._run(run)

    # -- single-use tokens, shared by every process on the database

    # -- outbox

    async def next_due(self, now: datetime, targets: Sequence[str] = ("webhook",), *,
                       in_subject_order: bool = False, businesses: Sequence[str] | None = None) -> OutboxRow | None:
        """The pending, unclaimed outbox row for one of `targets` (and of `businesses`, if given) due
        soonest at or before `now`, or None (a look only: `claim_due` is how a worker takes a row).

        With `in_subject_order`, a row is not due while an older pending row about the same
        subject and target waits (a booking's calendar writes land in the order they were made).
        """
        at = utc_text(now, "now")
        marks = ", ".join("?" for _ in targets)
        head = _HEAD_OF_SUBJECT if in_subject_order else ""
        only, whose = _businesses_clause(businesses)

        def query(sql: Sql) -> OutboxRow | None:
            rows = sql.execute(
                f"SELECT * FROM outbox o WHERE state = 'pending' AND target IN ({marks}){only} AND next_attempt_at <= ?"
                f"{_UNCLAIMED}{head} ORDER BY next_attempt_at, id LIMIT 1",
                (*targets, *whose, at, at),
            )
            return _outbox_row(rows[0]) if rows else None

        return await self._run(query)

    async def claim_due(self, now: datetime, targets: Sequence[str] = ("webhook",), *, owner: str,
                        lease_s: float, in_subject_order: bool = False,
                        businesses: Sequence[str] | None = None) -> OutboxRow | None:
        """Take the due row `next_due` would give, leased to `owner` until `now + lease_s`, or None.

        While the lease runs no other process takes the row; the `mark_*` calls with
        `claimed_by=owner` end it. A process that dies holding a claim loses it when the lease
        runs out, and the row is taken again (at-least-once; the receiver dedupes by its key).
        On PostgreSQL the row is selected `FOR UPDATE SKIP LOCKED`, so claimers never wait on
        each other; on SQLite the claim happens under the single writer's lock.
        """
        at = utc_text(now, "now")
        _text(owner, "owner", max_len=200)
        if not isinstance(lease_s, (int, float)) or not 0 < lease_s <= 86_400:
            raise StoreError(f"lease_s must be a number of seconds from 0 to 86400, got {lease_s!r}")
        until = utc_text(now + timedelta(seconds=lease_s), "lease_until")
        marks = ", ".join("?" for _ in targets)
        head = _HEAD_OF_SUBJECT if in_subject_order else ""
        only, whose = _businesses_clause(businesses)

        def claim(sql: Sql) -> OutboxRow | None:
            with sql.transaction():
                rows = sql.execute(
                    f"SELECT * FROM outbox o WHERE state = 'pending' AND target IN ({marks}){only} AND next_attempt_at <= ?"
                    f"{_UNCLAIMED}{head} ORDER BY next_attempt_at, id LIMIT 1{sql.skip_locked}",
                    (*targets, *whose, at, at),
                )
                if not rows:
                    return None
                sql.execute("UPDATE outbox SET claimed_by = ?, lease_until = ? WHERE id = ?",
                            (owner, until, rows[0]["id"]))
                return _outbox_row({**rows[0], "claimed_by": owner, "lease_until": until})

        return await self._run(claim)

    async def next_due_time(self, targets: Sequence[str] = ("webhook",), *,
                            in_subject_order: bool = False, businesses: Sequence[str] | None = None) -> datetime | None:
        """When the next pending row for one of `targets` (and `businesses`) is due (or its claim runs
        out), or None."""
        marks = ", ".join("?" for _ in targets)
        head = _HEAD_OF_SUBJECT if in_subject_order else ""
        only, whose = _businesses_clause(businesses)

        def query(sql: Sql) -> datetime | None:
            rows = sql.execute(
                "SELECT MIN(CASE WHEN lease_until > next_attempt_at THEN lease_until ELSE next_attempt_at END)"
                f" AS due FROM outbox o WHERE state = 'pending' AND target IN ({marks}){only}{head}", (*targets, *whose))
            return _dt(rows[0]["due"]) if rows else None

        return await self._run(query)

    async def outbox_for(self, subject: str, target: str = "webhook") -> OutboxRow | None:
        """The first outbox row about `subject` ("order:12") for `target`, or None."""
        _text(subject, "subject", max_len=200)

        def query(sql: Sql) -> OutboxRow | None:
            rows = sql.execute("SELECT * FROM outbox WHERE subject = ? AND target = ? ORDER BY id LIMIT 1",
                               (subject, target))
            return _outbox_row(rows[0]) if rows else None

        return await self._run(query)

    async def _update_pending(self, outbox_id: int, sql_text: str, params: tuple[object, ...],
                              claimed_by: str | None) -> bool:
        _order_id(outbox_id, "outbox_id")
        owner = "" if claimed_by is None else " AND claimed_by = ?"
        args = (*params, outbox_id) if claimed_by is None else (*params, outbox_id, claimed_by)

        def update(sql: Sql) -> bool:
            return sql.rowcount(sql_text + ", claimed_by = NULL, lease_until = NULL WHERE id = ? AND state = 'pending'"
                                + owner, args) == 1

        return await self._run(update)

    async def mark_delivered(self, outbox_id: int, *, delivered_at: datetime, claimed_by: str | None = None) -> bool:
        """A 2xx came back: the row is delivered. False if the row was not pending (or, with
        `claimed_by`, is no longer claimed by that owner)."""
        at = utc_text(delivered_at, "delivered_at")
        return await self._update_pending(
            outbox_id,
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, delivered_at = ?, next_attempt_at = NULL",
            (at,), claimed_by,
        )

    async def mark_retry(self, outbox_id: int, *, next_attempt_at: datetime, error: str,
                         claimed_by: str | None = None) -> bool:
        """An attempt failed; try again at `next_attempt_at`. False if the row was not pending."""
        at = utc_text(next_attempt_at, "next_attempt_at")
        _text(error, "error")
        return await self._update_pending(
            outbox_id,
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?",
            (at, error[:500]), claimed_by,
        )

    async def mark_dead(self, outbox_id: int, *, error: str, claimed_by: str | None = None) -> bool:
        """The last allowed attempt failed: the row is dead (kept, never deleted)."""
        _text(error, "error")
        return await self._update_pending(
            outbox_id,
            "UPDATE outbox SET state = 'dead', attempts = attempts + 1, next_attempt_at = NULL, last_error = ?",
            (error[:500],), claimed_by,
        )

    async def release_claim(self, outbox_id: int, *, claimed_by: str) -> bool:
        """Give a claimed row back unsent (the process is stopping): others may take it at once."""
        _order_id(outbox_id, "outbox_id")
        _text(claimed_by, "claimed_by", max_len=200)
        return await self._run(lambda sql: sql.rowcount(
            "UPDATE outbox SET claimed_by = NULL, lease_until = NULL WHERE id = ? AND claimed_by = ?",
            (outbox_id, claimed_by)) == 1)

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

        def update(sql: Sql) -> bool:
            with sql.transaction():
                rows = sql.execute("SELECT id, state FROM outbox WHERE subject = ? AND target = ? ORDER BY id LIMIT 1"
                                   + (" FOR UPDATE" if sql.skip_locked else ""), (subject, target))
                if not rows:
                    kind, _, number = subject.partition(":")
                    raise StoreError(f"{kind} #{number} does not exist or has no webhook delivery")
                if rows[0]["state"] not in states:
                    return False
                sql.execute(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, delivered_at = NULL,"
                    " claimed_by = NULL, lease_until = NULL WHERE id = ?",
                    (due, rows[0]["id"]),
                )
                return True

        return await self._run(update)

    # -- shared live state: redeemed stream tokens, the live-call registry

    async def redeem_token(self, token_hash: str, expires_at: datetime, *, now: datetime | None = None) -> bool:
        """Record a stream token as used, in every process on this database: True if this call is
        the first to redeem it, False if it was redeemed before. Tokens past their expiry are
        forgotten here (the caller refuses an expired token by its own signed expiry first).
        """
        _text(token_hash, "token_hash", max_len=200)
        until = utc_text(expires_at, "expires_at")
        at = utc_text(now or datetime.now(timezone.utc), "now")

        def redeem(sql: Sql) -> bool:
            with sql.transaction():
                sql.execute("DELETE FROM redeemed_tokens WHERE expires_at < ?", (at,))
                return sql.rowcount("INSERT INTO redeemed_tokens (token_hash, expires_at) VALUES (?, ?)"
                                    " ON CONFLICT (token_hash) DO NOTHING", (token_hash, until)) == 1

        return await self._run(redeem)

    async def live_call_upsert(self, call_sid: str, *, state: str, started_at: datetime, business: str | None = None,
                               summary: Mapping[str, Any] | None = None, now: datetime | None = None) -> None:
        """Add or refresh a call in the live-call registry, as carried by this process (`instance_id`)."""
        _text(call_sid, "call_sid", max_len=64)
        _text(state, "state", max_len=64)
        business = _text(business, "business", optional=True, max_len=200)
        started = utc_text(started_at, "started_at")
        beat = utc_text(now or datetime.now(timezone.utc), "now")
        try:
            body = json.dumps(dict(summary or {}), sort_keys=True, separators=(",", ":"), default=_json_default)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"summary is not JSON-able: {exc}") from None
        if len(body) > 4_000:
            raise StoreError("summary is longer than 4000 characters of JSON")

        def upsert(sql: Sql) -> None:
            sql.execute(
                "INSERT INTO live_calls (call_sid, business, instance, state, started_at, heartbeat_at, summary)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET business = excluded.business,"
                " instance = excluded.instance, state = excluded.state, heartbeat_at = excluded.heartbeat_at,"
                " summary = excluded.summary",
                (call_sid, business, self.instance_id, state, started, beat, body),
            )

        await self._run(upsert)

    async def live_call_remove(self, call_sid: str) -> bool:
        """The call ended: drop it from the registry. False if it was not listed."""
        _text(call_sid, "call_sid", max_len=64)
        return await self._run(lambda sql: sql.rowcount("DELETE FROM live_calls WHERE call_sid = ?", (call_sid,)) == 1)

    async def live_calls_heartbeat(self, *, now: datetime | None = None) -> int:
        """This process is alive: refresh the heartbeat of every call it carries; how many."""
        beat = utc_text(now or datetime.now(timezone.utc), "now")
        return await self._run(lambda sql: sql.rowcount(
            "UPDATE live_calls SET heartbeat_at = ? WHERE instance = ?", (beat, self.instance_id)))

    async def live_calls(self, *, business: str | None = None, now: datetime | None = None,
                         stale_after_s: float = LIVE_STALE_S) -> list[LiveCallRow]:
        """Every live call on every process (oldest first; only `business`'s if given). A call
        whose process sent no heartbeat for `stale_after_s` is dropped: that process is gone."""
        at = now or datetime.now(timezone.utc)
        stale = utc_text(at - timedelta(seconds=stale_after_s), "now")
        only = "" if business is None else " WHERE business = ?"

        def query(sql: Sql) -> list[LiveCallRow]:
            sql.execute("DELETE FROM live_calls WHERE heartbeat_at < ?", (stale,))
            rows = sql.execute("SELECT * FROM live_calls" + only + " ORDER BY started_at, call_sid",
                               () if business is None else (business,))
            return [
                LiveCallRow(
                    call_sid=r["call_sid"], business=r["business"], instance=r["instance"], state=r["state"],
                    started_at=_req_dt(r["started_at"]), heartbeat_at=_req_dt(r["heartbeat_at"]),
                    summary=json.loads(r["summary"]),
                )
                for r in rows
            ]

        return await self._run(query)


def _businesses_clause(businesses: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    if businesses is None:
        return "", ()
    if not businesses:
        return " AND 1 = 0", ()
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
