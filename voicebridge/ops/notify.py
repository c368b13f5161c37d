"""systemd's notify protocol (sd_notify), hand-written: READY, STOPPING, STATUS, WATCHDOG.

Datagrams go to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without
that variable, as outside systemd, every call is a no-op. Sends never block and never
raise: a failure is logged and reported as False.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Mapping

import trio

log = logging.getLogger(__name__)


class Notifier:
    """Talk to the service manager named by `NOTIFY_SOCKET` / `WATCHDOG_USEC` / `WATCHDOG_PID`."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | bytes | None = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self.watchdog_interval_s: float | None = _watchdog_interval(env)
        """The watchdog timeout systemd expects pings within, or None if not watched."""
        if self._address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            except OSError as exc:
                log.warning("systemd notify disabled: cannot create a socket: %s", exc)
                self._address = None

    @property
    def enabled(self) -> bool:
        """True if there is a service manager to notify."""
        return self._sock is not None

    def ready(self) -> bool:
        """Tell systemd startup is complete (Type=notify)."""
        return self._send("READY=1")

    def stopping(self) -> bool:
        """Tell systemd we are shutting down (draining calls)."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by `systemctl status`."""
        return self._send("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> bool:
        """Ping the watchdog (a no-op when WatchdogSec is not in force for this process)."""
        if self.watchdog_interval_s is None:
            return False
        return self._send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> bool:
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("systemd notify %s failed: %s", message.partition("=")[0], exc)
            return False
        return True


async def watchdog_task(notifier: Notifier, *, healthy: Callable[[], bool]) -> None:
    """Ping the watchdog every half interval while `healthy()`; runs until cancelled.

    When `healthy()` is false (or raises), pings are skipped so systemd kills and restarts
    us after `WatchdogSec`. Returns at once if the watchdog is not enabled for this process.
    """
    interval = notifier.watchdog_interval_s
    if interval is None or not notifier.enabled:
        return
    was_healthy = True
    while True:
        try:
            ok = bool(healthy())
        except Exception:
            log.exception("health check failed; counting it as unhealthy")
            ok = False
        if ok:
            notifier.watchdog()
        elif was_healthy:
            log.error("unhealthy: withholding watchdog pings; systemd restarts us after %.0f s", interval)
        if ok and not was_healthy:
            log.warning("healthy again: watchdog pings resumed")
        was_healthy = ok
        await trio.sleep(interval / 2)


def _address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode("utf-8")
    if raw.startswith("/"):
        return raw
    log.warning("systemd notify disabled: unsupported NOTIFY_SOCKET %r", raw)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("watchdog disabled: WATCHDOG_USEC is not a number: %r", raw)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000
