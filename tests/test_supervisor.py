"""The supervisor's timing, on trio's MockClock: when systemd hears READY and WATCHDOG, when a silent
worker is killed, and how the restart pause grows. (tests/test_workers.py runs it for real.)"""

from __future__ import annotations

import signal


import pytest
import trio
from trio.testing import MockClock

from voicebridge.config import Config, ConfigError
from voicebridge.ops import supervisor as sv
from voicebridge.ops.supervisor import Supervisor, Worker, worker_environment


class FakeNotifier:
    """Records what systemd would hear, with the (mock) time."""

    def __init__(self, watchdog_s: float | None = 2.0) -> None:
        self.watchdog_interval_s = watchdog_s
        self.sent: list[tuple[float, str]] = []

    def _add(self, message: str) -> bool:
        self.sent.append((trio.current_time(), message))
        return True

    def ready(self) -> bool:
        return self._add("READY=1")

    def watchdog(self) -> bool:
        return self._add("WATCHDOG=1")

    def stopping(self) -> bool:
        return self._add("STOPPING=1")

    def status(self, text: str) -> bool:
        return self._add("STATUS=" + text)

    def close(self) -> None:
        """Nothing to release: the messages are kept in memory for the test to read."""

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.sent if m == message]


class FakeProcess:
    def __init__(self, pid: int, exit_after: float | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.killed_at: float | None = None
        self.signals: list[int] = []
        self._done = trio.Event()
        self._exit_after = exit_after

    def kill(self) -> None:
        self.killed_at = trio.current_time()
        self.returncode = -signal.SIGKILL
        self._done.set()

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = 0
        self._done.set()

    async def wait(self) -> int:
        if self._exit_after is not None:
            with trio.move_on_after(self._exit_after):
                await self._done.wait()
            if self.returncode is None:
                self.returncode = 1
        else:
            await self._done.wait()
        assert self.returncode is not None
        return self.returncode


def make(workers: int = 2, notifier: FakeNotifier | None = None) -> tuple[Supervisor, FakeNotifier]:
    fake = notifier or FakeNotifier()
    config = Config(workers=workers, port=8080, twilio_auth_token="t" * 32)
    return Supervisor(config, ["voicebridge", "serve"], environ={}, notifier=fake), fake  # type: ignore[arg-type]


async def test_ready_once_all_serve_and_watchdog_only_while_all_answer(autojump_clock: MockClock) -> None:
    sup, notifier = make()
    a, b = Worker(1, "a.sock", FakeProcess(101)), Worker(2, "b.sock", FakeProcess(102))  # type: ignore[arg-type]
    sup.workers = [a, b]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup._health)
        a.ready, a.last_ping = True, trio.current_time()
        await trio.sleep(3)
        assert notifier.times("READY=1") == []  # one worker is not serving yet
        assert notifier.times("WATCHDOG=1") == []
        b.ready = True

        async def ping(worker: Worker, until: float) -> None:  # what a worker's watchdog task does
            while trio.current_time() < until:
                worker.last_ping = trio.current_time()
                await trio.sleep(sv.WORKER_WATCHDOG_S / 2)

        t0 = trio.current_time()
        nursery.start_soon(ping, a, t0 + 60)
        nursery.start_soon(ping, b, t0 + 20)  # b hangs at t0 + 20
        await trio.sleep(0.6)
        assert len(notifier.times("READY=1")) == 1
        await trio.sleep(25)
        pings = notifier.times("WATCHDOG=1")
        assert pings and pings[0] - t0 < 1.5
        gaps = [y - x for x, y in zip(pings, pings[1:])]
        assert max(gaps) <= 1.0 + 1e-6  # every WatchdogSec/2 while healthy
        b_process = b.process
        assert isinstance(b_process, FakeProcess) and b_process.killed_at is not None
        # b's last ping was at t0+15 (every 5 s); it is killed once silent for WORKER_WATCHDOG_S
        assert t0 + 15 + sv.WORKER_WATCHDOG_S <= b_process.killed_at <= t0 + 15 + sv.WORKER_WATCHDOG_S + sv.TICK_S
        assert pings[-1] < b_process.killed_at  # no ping once a worker is silent too long or gone
        assert "STATUS=2 of 2 workers ready" in [m for _, m in notifier.sent]
        assert "STATUS=1 of 2 workers ready" in [m for _, m in notifier.sent]  # b killed: 1 of 2
        a_process = a.process
        assert isinstance(a_process, FakeProcess) and a_process.killed_at is None  # the other is untouched
        nursery.cancel_scope.cancel()


async def test_a_worker_that_keeps_crashing_is_restarted_with_a_growing_pause(
        autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    sup, notifier = make()
    worker = Worker(1, "w1.sock")
    starts: list[float] = []

    async def open_process(argv: list[str], env: dict[str, str]) -> FakeProcess:
        starts.append(trio.current_time())
        assert env[sv.WORKER_ENV] == "1" and env["NOTIFY_SOCKET"] == "w1.sock"
        worker.ready = worker.was_ready = True  # it got ready (READY=1) ...
        return FakeProcess(200 + len(starts), exit_after=0.1)  # ... and crashes 0.1 s after it started

    monkeypatch.setattr(sv.trio.lowlevel, "open_process", open_process)
    monkeypatch.setattr(sv, "mark_process_dead", lambda pid, path: None)
    sup.env[sv.MULTIPROCESS_ENV] = "unused"
    with trio.move_on_after(120):
        await sup._keep(worker)
    pauses = [round(b - a - 0.1, 3) for a, b in zip(starts, starts[1:])]
    assert pauses[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(pauses[7:]) == {30.0}
    assert not sup.gave_up


async def test_a_worker_that_never_gets_ready_stops_everything_after_five_tries(
        autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is taken, say: retrying forever would only hide it; systemd sees the service fail."""
    sup, notifier = make()
    starts: list[float] = []

    async def open_process(argv: list[str], env: dict[str, str]) -> FakeProcess:
        starts.append(trio.current_time())
        return FakeProcess(400 + len(starts), exit_after=0.1)  # exits before READY every time

    monkeypatch.setattr(sv.trio.lowlevel, "open_process", open_process)
    monkeypatch.setattr(sv, "mark_process_dead", lambda pid, path: None)
    sup.env[sv.MULTIPROCESS_ENV] = "unused"
    with trio.fail_after(60):
        await sup._keep(Worker(1, "w1.sock"))
    assert len(starts) == sv.MAX_FAILED_STARTS
    assert [round(b - a - 0.1, 3) for a, b in zip(starts, starts[1:])] == [0.5, 1.0, 2.0, 4.0]
    assert sup.gave_up and sup._stop_now.is_set()


async def test_sigterm_goes_to_every_worker_and_stragglers_are_killed(autojump_clock: MockClock) -> None:
    sup, notifier = make()

    class Stubborn(FakeProcess):
        def send_signal(self, sig: int) -> None:  # ignores SIGTERM: keeps a call past the deadline
            self.signals.append(sig)

    quick, stubborn = FakeProcess(301), Stubborn(302)
    sup.workers = [Worker(1, "a", quick), Worker(2, "b", stubborn)]  # type: ignore[arg-type]
    t0 = trio.current_time()
    assert await sup._stop() is False
    assert notifier.times("STOPPING=1") == [t0]
    assert quick.signals == [signal.SIGTERM] and stubborn.signals == [signal.SIGTERM]
    assert quick.killed_at is None
    assert stubborn.killed_at == pytest.approx(t0 + sup.config.drain_timeout_s + sv.KILL_MARGIN_S)


def test_workers_share_a_stream_secret_and_not_systemds_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1", "PATH": "/bin"}
    unsigned = worker_environment(Config(workers=2, allow_unsigned=True), env)
    assert "NOTIFY_SOCKET" not in unsigned and "WATCHDOG_USEC" not in unsigned and unsigned["PATH"] == "/bin"
    assert len(unsigned["VOICEBRIDGE_STREAM_SECRET"]) == 64  # one key for all of this run's workers
    signed = worker_environment(Config(workers=2, twilio_auth_token="t" * 32), env)
    assert "VOICEBRIDGE_STREAM_SECRET" not in signed  # each worker derives the same key from the token


def test_workers_cannot_share_port_zero() -> None:
    with pytest.raises(ConfigError, match="VOICEBRIDGE_PORT"):
        Supervisor(Config(workers=2, port=0), ["x"], environ={}, notifier=FakeNotifier())  # type: ignore[arg-type]


