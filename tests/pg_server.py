"""A throwaway PostgreSQL server for the tests and the benchmark: initdb in a temporary directory,
`postgres` listening on 127.0.0.1 (a free port) and a socket in that directory, stopped at the end.

Debian's `postgresql` package puts the binaries in /usr/lib/postgresql/<major>/bin. PostgreSQL
refuses to run as root, so as root the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import contextlib

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None when none is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One running server; `url(dbname)` gives a libpq URL for a database on it."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable  # False (tests): no fsync; True (the benchmark): PostgreSQL's defaults
        self.root = Path(tempfile.mkdtemp(prefix="vb-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._proc: subprocess.Popen[bytes] | None = None
        self._counter = 0

    def _user_kwargs(self) -> dict[str, object]:
        """As root, run as `postgres` (no wrapper process, so signals reach the server itself)."""
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": [], "cwd": str(self.root)}

    def start(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            **self._user_kwargs(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        )
        log = open(self.root / "server.log", "wb")
        self._proc = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.root), "-c", "max_connections=200",
             *([] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                        "-c", "full_page_writes=off"])],
            **self._user_kwargs(), stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):  # not accepting yet: poll again until the deadline
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                ready = subprocess.run([str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
                if ready.returncode == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start within {START_TIMEOUT_S:g} s")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._counter += 1
        name = f"vb_test_{os.getpid()}_{self._counter}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, stop cleanly
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


# -- pytest fixtures (a plugin: tests/conftest.py lists this module in pytest_plugins) -----------

_SHARED: PgServer | None = None
NOT_INSTALLED = ("PostgreSQL is not installed (Debian: apt-get install postgresql); "
                 "the PostgreSQL half of this test is skipped")


def shared_server() -> PgServer:
    """One server for the whole test session, started on first use and stopped at exit."""
    global _SHARED
    if _SHARED is None:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            pytest.skip(NOT_INSTALLED)
        server = PgServer(bin_dir)
        server.start()
        atexit.register(server.stop)
        _SHARED = server
    return _SHARED


@pytest.fixture
def pg() -> PgServer:
    return shared_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's store lives: a fresh SQLite file, or a fresh database on the shared server."""
    if request.param == "sqlite":
        return tmp_path / "vb.sqlite3"
    return shared_server().new_database()
