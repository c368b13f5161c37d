"""systemd notify datagrams and the watchdog cadence (voicebridge.ops.notify)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import trio
from trio.testing import MockClock

from voicebridge.ops.notify import Notifier, watchdog_task


@pytest.fixture
def path_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in a short temporary directory (AF_UNIX paths are short)."""
    with tempfile.TemporaryDirectory(prefix="vb-") as tmp:
        path = str(Path(tmp) / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield sock, path
        finally:
            sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in the abstract namespace; yields it and its `@name`."""
    name = "vb-test-" + secrets.token_hex(8)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on `sock` (at most 1000)."""
    out = []
    for _ in range(1000):
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            break
    return out


def test_ready_status_stopping_arrive_as_datagrams(path_socket: tuple[socket.socket, str]) -> None:
    """Each call sends its sd_notify line to the path socket, in order."""
    sock, path = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("serving\n3 calls")
    assert notifier.stopping()
    notifier.close()
    assert drain(sock) == [b"READY=1", b"STATUS=serving 3 calls", b"STOPPING=1"]


def test_abstract_socket_name_is_supported(abstract_socket: tuple[socket.socket, str]) -> None:
    """`@name` in NOTIFY_SOCKET addresses the abstract namespace."""
    sock, name = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.ready()
    notifier.close()
    assert drain(sock) == [b"READY=1"]


def test_without_notify_socket_every_call_is_a_noop() -> None:
    """Outside systemd nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert (notifier.ready(), notifier.stopping(), notifier.status("x"), notifier.watchdog()) == (False,) * 4


def test_send_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A socket path with no listener: the call returns False and logs a warning."""
    with tempfile.TemporaryDirectory(prefix="vb-") as tmp:
        notifier = Notifier({"NOTIFY_SOCKET": str(Path(tmp) / "absent.sock")})
        with caplog.at_level(logging.WARNING, logger="voicebridge.ops.notify"):
            assert not notifier.ready()
        notifier.close()
    assert "systemd notify READY failed" in caplog.text


def test_relative_notify_socket_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """NOTIFY_SOCKET that is neither a path nor @name disables notify, with a warning."""
    with caplog.at_level(logging.WARNING, logger="voicebridge.ops.notify"):
        notifier = Notifier({"NOTIFY_SOCKET": "relative.sock"})
    assert not notifier.enabled
    assert "unsupported NOTIFY_SOCKET" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_from_environment(env: dict[str, str], expected: float | None) -> None:
    """WATCHDOG_USEC sets the interval unless WATCHDOG_PID names another process."""
    assert Notifier(env).watchdog_interval_s == expected


async def test_watchdog_pings_at_half_the_interval_and_skips_when_unhealthy(
    autojump_clock: MockClock, abstract_socket: tuple[socket.socket, str]
) -> None:
    """WATCHDOG=1 every WatchdogSec/2 while healthy; none while unhealthy; resumes after."""
    sock, name = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "10000000"})  # 10 s
    state = {"healthy": True}
    seen: list[tuple[float, bytes]] = []
    start = trio.current_time()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watchdog_task(notifier, healthy=lambda: state["healthy"]))
            await trio.sleep(0.5)  # observe half a second after each possible ping
            for _ in range(36):
                elapsed = trio.current_time() - start
                if elapsed > 12:
                    state["healthy"] = elapsed > 21
                seen += [(round(elapsed - 0.5, 3), msg) for msg in drain(sock)]
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
    notifier.close()
    assert seen == [(0.0, b"WATCHDOG=1"), (5.0, b"WATCHDOG=1"), (10.0, b"WATCHDOG=1"),
                    (25.0, b"WATCHDOG=1"), (30.0, b"WATCHDOG=1"), (35.0, b"WATCHDOG=1")]


async def test_watchdog_task_returns_when_not_watched(autojump_clock: MockClock) -> None:
    """Without WATCHDOG_USEC the task ends at once instead of looping."""
    notifier = Notifier({})
    with trio.fail_after(1):
        await watchdog_task(notifier, healthy=lambda: True)
    assert trio.current_time() == 0


async def test_health_check_that_raises_counts_as_unhealthy(
    autojump_clock: MockClock, abstract_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A crashing health check withholds pings and is logged; the task keeps running."""
    sock, name = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})  # ping every 1 s

    def broken() -> bool:
        raise RuntimeError("database locked")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watchdog_task(notifier, healthy=broken))
            await trio.sleep(5.5)
            nursery.cancel_scope.cancel()
    notifier.close()
    assert drain(sock) == []
    assert "health check failed" in caplog.text
