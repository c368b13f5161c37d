"""The PostgreSQL backend of the store: psycopg 3's sync API on a small connection pool, each
function run in a worker thread (`trio.to_thread.run_sync`) like the SQLite backend.

Why threads and not psycopg's AsyncConnection: that API is written for asyncio (it needs a
running asyncio loop; under Trio it fails with "no running event loop"), and a thread per
statement costs microseconds next to a network round trip. The pool (psycopg_pool) keeps up to
`pool_size` connections, and a Trio CapacityLimiter of the same size bounds the threads.
`threaded=False` runs on the event loop with one connection (tests on a mock clock only).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from voicebridge.ops.db import Conflict, Sql, StoreError, placeholders, translate_ddl

T = TypeVar("T")

POOL_SIZE = 4
CONNECT_TIMEOUT_S = 10
_SCHEMA_LOCK = 0x766F6963  # pg_advisory_xact_lock key: migrations run one process at a time
_VERSION_TABLE = "voicebridge_schema"


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


class PgSql:
    """`voicebridge.ops.db.Sql` on a psycopg connection in autocommit mode (transactions explicit)."""

    dialect = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.sent = 0  # statements the server has answered on this connection for this function

    def _cursor(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        try:
            cur = self.conn.execute(placeholders(sql), tuple(params))
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(str(exc).strip()) from exc
        self.sent += 1
        return cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._cursor(sql, params)
        return [dict(r) for r in cur.fetchall()] if cur.description else []

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor(sql, params).rowcount

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._cursor(sql.rstrip().rstrip(";") + " RETURNING id", params).fetchone()
        assert row is not None
        return int(row["id"])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN")
        self.sent += 1
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.info.transaction_status != pq.TransactionStatus.IDLE and not self.conn.closed:
                self.conn.execute("ROLLBACK")
            raise

    def schema_lock(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))

    def serialize(self, key: str) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))

    def engine_version(self) -> int:
        exists = self.conn.execute("SELECT to_regclass(%s) AS t", (_VERSION_TABLE,)).fetchone()
        if exists is None or exists["t"] is None:
            return 0
        row = self.conn.execute(f"SELECT MAX(version) AS v FROM {_VERSION_TABLE}").fetchone()
        return 0 if row is None or row["v"] is None else int(row["v"])

    def set_engine_version(self, version: int) -> None:
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} (version BIGINT NOT NULL)")
        self.conn.execute(f"DELETE FROM {_VERSION_TABLE}")
        self.conn.execute(f"INSERT INTO {_VERSION_TABLE} (version) VALUES (%s)", (int(version),))

    def ddl(self, statement: str) -> str:
        return translate_ddl(statement)


def _conn_kwargs(busy_timeout_ms: int) -> dict[str, Any]:
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": CONNECT_TIMEOUT_S,
        # like SQLite's busy_timeout: a write waits this long for another process's lock
        "options": f"-c lock_timeout={int(busy_timeout_ms)} -c TimeZone=UTC",
        "application_name": "voicebridge",
    }


class PostgresBackend:
    """An open PostgreSQL database (a pool of connections)."""

    dialect = "postgresql"

    def __init__(self, url: str, *, pool: psycopg_pool.ConnectionPool[Any] | None,
                 conn: psycopg.Connection[Any] | None, pool_size: int) -> None:
        self.name = redact(url)
        self._pool = pool
        self._conn = conn  # threaded=False: one connection, used on the event loop
        self._limiter = trio.CapacityLimiter(pool_size)
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, threaded: bool, busy_timeout_ms: int,
                   pool_size: int = POOL_SIZE) -> PostgresBackend:
        name = redact(url)
        kwargs = _conn_kwargs(busy_timeout_ms)
        try:
            if not threaded:
                return cls(url, pool=None, conn=psycopg.connect(url, **kwargs), pool_size=1)

            def make() -> psycopg_pool.ConnectionPool[Any]:
                pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                    url, min_size=1, max_size=pool_size, kwargs=kwargs, open=False, timeout=CONNECT_TIMEOUT_S,
                    name="voicebridge")
                try:
                    pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
                    with pool.connection() as conn:  # fail now, with libpq's words, if it cannot connect
                        conn.execute("SELECT 1")
                except BaseException:
                    pool.close(timeout=1)
                    raise
                return pool

            return cls(url, pool=await trio.to_thread.run_sync(make), conn=None, pool_size=pool_size)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"database {name}: {detail}") from None

    def _call(self, fn: Callable[[Sql], T]) -> T:
        if self._conn is not None:
            return fn(PgSql(self._conn))
        assert self._pool is not None
        for attempt in (1, 2):
            with self._pool.connection() as conn:
                sql = PgSql(conn)
                try:
                    return fn(sql)
                except psycopg.OperationalError:
                    # A pooled connection the server dropped (a restart, a failover, an idle timeout) fails
                    # on its first statement: nothing was done, so once, on a fresh connection, is safe.
                    # The pool discards the broken one when it comes back.
                    if attempt == 2 or sql.sent or not conn.broken:
                        raise
            self._pool.check()  # the other idle connections were most likely dropped too: replace them now
        raise AssertionError("unreachable")

    async def run(self, fn: Callable[[Sql], T]) -> T:
        if self._closed:
            raise StoreError(f"database {self.name}: the store is closed")
        try:
            if self._pool is not None:
                return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)
            return self._call(fn)
        except Conflict as exc:
            raise Conflict(f"database {self.name}: {exc}") from exc
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"database {self.name}: {detail}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            pool = self._pool
            await trio.to_thread.run_sync(lambda: pool.close(timeout=5))
        if self._conn is not None:
            self._conn.close()
