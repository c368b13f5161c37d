"""The SQLite backend of the store: one connection in WAL mode, one statement at a time.

Every function runs in a worker thread (`trio.to_thread.run_sync`) behind a lock, so a slow
disk never blocks a call; `threaded=False` runs it on the event loop (tests on a mock clock).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import trio

from voicebridge.ops.db import Conflict, Sql, StoreError

T = TypeVar("T")


class SqliteSql:
    """`voicebridge.ops.db.Sql` on a sqlite3 connection (autocommit mode; transactions explicit)."""

    dialect = "sqlite"
    skip_locked = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _cursor(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._cursor(sql, params)
        return [dict(r) for r in cur.fetchall()] if cur.description else []

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor(sql, params).rowcount

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self._cursor(sql, params)
        assert cur.lastrowid is not None
        return cur.lastrowid

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def schema_lock(self) -> None:
        return None

    def serialize(self, key: str) -> None:
        return None

    def engine_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def set_engine_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement: str) -> str:
        return statement


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
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteBackend:
    """An open SQLite file."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path, threaded: bool) -> None:
        self.path = path
        self.name = str(path)
        self._sql: SqliteSql | None = SqliteSql(conn)
        self._threaded = threaded
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path, *, threaded: bool, busy_timeout_ms: int) -> SqliteBackend:
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

    async def run(self, fn: Callable[[Sql], T]) -> T:
        async with self._lock:
            sql = self._sql
            if sql is None:
                raise StoreError(f"database {self.path}: the store is closed")
            try:
                if self._threaded:
                    return await trio.to_thread.run_sync(fn, sql)
                return fn(sql)
            except Conflict as exc:
                raise Conflict(f"database {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from exc

    async def aclose(self) -> None:
        async with self._lock:
            sql, self._sql = self._sql, None
            if sql is not None:
                if self._threaded:
                    await trio.to_thread.run_sync(sql.conn.close)
                else:
                    sql.conn.close()
