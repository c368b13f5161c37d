"""`VOICEBRIDGE_WORKERS=N`: N worker processes behind one port, under one supervisor.

The supervisor is the process systemd starts (and the only one it hears from). It runs each
worker as `voicebridge serve` with `VOICEBRIDGE_WORKER=<index>` in its environment; a worker
binds the public host:port with SO_REUSEPORT (`voicebridge.edges.listen`), so the kernel spreads
connections across them. Each worker speaks the ordinary sd_notify protocol (`ops.notify`) to
its own datagram socket in the supervisor's private directory: READY=1 once it serves,
WATCHDOG=1 every `WORKER_WATCHDOG_S / 2` while healthy, STOPPING=1 when it drains.

The supervisor tells systemd READY=1 once every worker is ready, WATCHDOG=1 only while every
worker is alive, ready and pinging, and STOPPING=1 on SIGTERM. A worker that exits is started
again (with a growing pause if it keeps failing) and one that stops pinging is killed and
started again; the others, and their calls, are not touched. SIGTERM (or SIGINT) is forwarded to
every worker, which drains its calls; whatever is still running after the drain deadline (plus
a margin) is killed.

All workers share the database (SQLite's file locks; PostgreSQL's server) and the stream token
key: the supervisor hands them `VOICEBRIDGE_STREAM_SECRET` when neither it nor
TWILIO_AUTH_TOKEN (from which it is otherwise derived) is set.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
from typing import Mapping, Sequence

import attrs
import trio
from prometheus_client.multiprocess import mark_process_dead

from voicebridge.config import Config, ConfigError
from voicebridge.ops.metrics import MULTIPROCESS_ENV
from voicebridge.ops.notify import Notifier

log = logging.getLogger("voicebridge.ops.supervisor")

WORKER_ENV = "VOICEBRIDGE_WORKER"  # set to the worker's index (1..N) in each worker's environment
WORKER_WATCHDOG_S = 10.0  # a worker that has not pinged for this long is killed and started again
START_TIMEOUT_S = 60.0  # a worker not READY this long after it started is killed and started again
RESTART_PAUSE_S = 0.5  # the pause before restarting a worker that crashed; doubles while it keeps crashing
RESTART_PAUSE_MAX_S = 30.0
STABLE_S = 30.0  # a worker that ran this long resets its restart pause
MAX_FAILED_STARTS = 5  # a worker that exits this many times in a row without ever getting ready: give up
KILL_MARGIN_S = 10.0  # after the drain deadline, how long workers get to finish before SIGKILL
TICK_S = 0.5


@attrs.define
class Worker:
    index: int
    sock_path: str
    process: trio.Process | None = None
    ready: bool = False
    started_at: float = 0.0
    last_ping: float = 0.0
    starts: int = 0
    failed_starts: int = 0  # exits in a row before READY (reset once it gets ready)
    was_ready: bool = False  # this start of it got ready


def worker_environment(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment every worker shares: ours, minus systemd's notify variables (they are the
    supervisor's), plus the stream token key when the configuration gives none."""
    env = {k: v for k, v in environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", MULTIPROCESS_ENV)}
    # what `serve --host/--port/--log-format` chose, for workers that read only the environment
    env.update({"VOICEBRIDGE_HOST": config.host, "VOICEBRIDGE_PORT": str(config.port),
                "VOICEBRIDGE_LOG_FORMAT": config.log_format})
    if not config.stream_secret and not config.twilio_auth_token:
        env["VOICEBRIDGE_STREAM_SECRET"] = secrets.token_hex(32)  # one key for this run's workers
    return env


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], *, environ: Mapping[str, str] | None = None,
                 notifier: Notifier | None = None) -> None:
        if config.workers < 2:
            raise ValueError("a supervisor runs 2 workers or more")
        if config.port == 0:
            raise ConfigError("VOICEBRIDGE_PORT: workers share one port; 0 (any free port) would give each its own")
        env = os.environ if environ is None else environ
        self.config = config
        self.argv = list(argv)
        self.notifier = notifier or Notifier(env)
        self.env = worker_environment(config, env)
        self.stopping = False
        self.announced_ready = False
        self.workers: list[Worker] = []
        self._dir = ""
        self._stop_now = trio.Event()  # a signal came, or a worker cannot start at all
        self.gave_up = False

    async def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT, then drain them; 0 when all stopped by themselves."""
        self._dir = tempfile.mkdtemp(prefix="voicebridge-workers-")
        self.env[MULTIPROCESS_ENV] = os.path.join(self._dir, "metrics")  # one /metrics for all workers
        os.mkdir(self.env[MULTIPROCESS_ENV])
        socks: list[trio.socket.SocketType] = []
        try:
            for i in range(1, self.config.workers + 1):
                path = os.path.join(self._dir, f"worker-{i}.sock")
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                await sock.bind(path)
                socks.append(sock)
                self.workers.append(Worker(i, path))
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    for worker, sock in zip(self.workers, socks):
                        nursery.start_soon(self._listen, worker, sock)
                        nursery.start_soon(self._keep, worker)
                    nursery.start_soon(self._health)

                    async def on_signal() -> None:
                        async for signum in signals:
                            log.info("%s: draining %d workers", signal.Signals(signum).name, len(self.workers),
                                     extra={"event": "draining"})
                            self._stop_now.set()
                            return

                    nursery.start_soon(on_signal)
                    await self._stop_now.wait()
                    clean = await self._stop()
                    nursery.cancel_scope.cancel()
            log.info("stopped", extra={"event": "stopped"})
            return 0 if clean and not self.gave_up else 1
        finally:
            for sock in socks:
                sock.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- one worker ------------------------------------------------------------------------

    async def _keep(self, worker: Worker) -> None:
        """Start the worker, and start it again whenever it exits, until we stop."""
        pause = RESTART_PAUSE_S
        while not self.stopping:
            env = {**self.env, WORKER_ENV: str(worker.index), "NOTIFY_SOCKET": worker.sock_path,
                   "WATCHDOG_USEC": str(int(WORKER_WATCHDOG_S * 1_000_000))}
            worker.ready = worker.was_ready = False
            worker.started_at = worker.last_ping = trio.current_time()
            worker.starts += 1
            try:
                process = await trio.lowlevel.open_process(self.argv, env=env)
            except OSError as exc:
                log.error("cannot start worker %d: %s", worker.index, exc, extra={"event": "worker_failed"})
                if self._give_up_on(worker, str(exc)):
                    return
                await trio.sleep(pause)
                pause = min(pause * 2, RESTART_PAUSE_MAX_S)
                continue
            worker.process = process
            if self.stopping:  # SIGTERM came while it was starting: it drains like the others
                process.send_signal(signal.SIGTERM)
            log.info("worker %d started (pid %d)", worker.index, process.pid,
                     extra={"event": "worker_started", "worker": worker.index, "pid": process.pid})
            with trio.CancelScope(shield=True):  # the process is reaped even while we are cancelled
                code = await process.wait()
            worker.ready = False
            # its live calls are gone; its counts stay
            mark_process_dead(process.pid, self.env[MULTIPROCESS_ENV])  # type: ignore[no-untyped-call]
            if self.stopping:
                log.info("worker %d stopped (exit %s)", worker.index, code,
                         extra={"event": "worker_stopped", "worker": worker.index, "code": code})
                return
            if trio.current_time() - worker.started_at >= STABLE_S:
                pause = RESTART_PAUSE_S
            if worker.was_ready:
                worker.failed_starts = 0
            elif self._give_up_on(worker, _how(code)):
                return
            log.error("worker %d exited (%s); starting it again in %.1f s (the other workers' calls go on)",
                      worker.index, _how(code), pause,
                      extra={"event": "worker_exited", "worker": worker.index, "code": code})
            await trio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX_S)

    def _give_up_on(self, worker: Worker, why: str) -> bool:
        """Count a start that never got ready; after MAX_FAILED_STARTS in a row (the port is taken, the
        database cannot be opened, ...) stop everything rather than retry forever: True then."""
        worker.failed_starts += 1
        if worker.failed_starts < MAX_FAILED_STARTS:
            return False
        log.error("worker %d failed %d times in a row before getting ready (%s); stopping all workers "
                  "(its output above says why)", worker.index, worker.failed_starts, why,
                  extra={"event": "worker_failed", "worker": worker.index})
        self.gave_up = True
        self._stop_now.set()
        return True

    async def _listen(self, worker: Worker, sock: trio.socket.SocketType) -> None:
        """The worker's sd_notify messages: READY=1, WATCHDOG=1, STOPPING=1."""
        while True:
            data = await sock.recv(4096)
            for line in data.decode("utf-8", "replace").splitlines():
                if line == "READY=1":
                    worker.ready = worker.was_ready = True
                    worker.last_ping = trio.current_time()
                    log.info("worker %d ready", worker.index, extra={"event": "worker_ready", "worker": worker.index})
                elif line == "WATCHDOG=1":
                    worker.last_ping = trio.current_time()
                elif line == "STOPPING=1":
                    worker.ready = False

    # -- all of them -----------------------------------------------------------------------

    def _serving(self, now: float) -> list[bool]:
        """Per worker: alive, ready, and heard from within the worker watchdog timeout. One reading
        per tick: `returncode` asks the OS, and READY, WATCHDOG and STATUS must agree with each other."""
        return [w.process is not None and w.process.returncode is None and w.ready
                and now - w.last_ping < WORKER_WATCHDOG_S for w in self.workers]

    def healthy(self) -> bool:
        """Every worker alive, ready, and heard from within the worker watchdog timeout."""
        return all(self._serving(trio.current_time()))

    async def _health(self) -> None:
        interval = self.notifier.watchdog_interval_s
        tick = min(TICK_S, interval / 2) if interval else TICK_S
        last_ping = -1e9
        last_status = ""
        while not self.stopping:
            now = trio.current_time()
            for w in self.workers:
                alive = w.process is not None and w.process.returncode is None
                silent = now - w.last_ping >= (WORKER_WATCHDOG_S if w.ready else START_TIMEOUT_S)
                if alive and silent and w.process is not None:
                    log.error("worker %d %s; killing it to start it again", w.index,
                              "stopped answering" if w.ready else "did not get ready",
                              extra={"event": "worker_hung", "worker": w.index})
                    w.ready = False
                    w.process.kill()
            serving = self._serving(now)
            ok = all(serving)
            if ok and not self.announced_ready:
                self.announced_ready = True
                self.notifier.ready()
                log.info("all %d workers ready", len(self.workers), extra={"event": "serving"})
            status = f"{sum(serving)} of {len(self.workers)} workers ready"
            if status != last_status and self.announced_ready:  # `systemctl status` shows how many serve
                self.notifier.status(status)
                last_status = status
            if ok and interval and now - last_ping >= interval / 2:
                self.notifier.watchdog()
                last_ping = now
            await trio.sleep(tick)

    async def _stop(self) -> bool:
        """Forward SIGTERM, wait up to the drain deadline (and a margin), then SIGKILL the rest."""
        self.stopping = True
        self.notifier.stopping()
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.config.drain_timeout_s + KILL_MARGIN_S):
            for w in self.workers:
                if w.process is not None:
                    await w.process.wait()
            return True
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                log.error("worker %d still running after the drain deadline: killing it", w.index,
                          extra={"event": "worker_killed", "worker": w.index})
                w.process.kill()
        with trio.move_on_after(5):
            for w in self.workers:
                if w.process is not None:
                    await w.process.wait()
        return False


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def run_supervisor(config: Config, argv: Sequence[str]) -> int:
    """Run `config.workers` copies of `argv` (the `serve` command) under a supervisor; its exit status."""
    supervisor = Supervisor(config, argv)
    try:
        return trio.run(supervisor.run)
    finally:
        supervisor.notifier.close()
