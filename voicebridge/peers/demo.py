"""`voicebridge demo`: one whole call, offline, through the real daemon on loopback.

The daemon is the one `serve` runs (same app, same call engine, same store and outbox); only its
peers are local: the Realtime server (`peers.realtime_server`) and a caller that behaves like
Twilio (`peers.twilio_caller`: it fetches TwiML from /incoming-call, opens /media-stream, streams
real speech, plays the AI's audio out in real time, and posts /stream-ended). Settings come from
the same configuration as `serve`; the demo fills in what a laptop lacks: a loopback public URL,
no Twilio token (it sets the development switch, and says so), and a local webhook receiver
when ORDER_WEBHOOK_URL is unset.
"""

from __future__ import annotations

import logging
import secrets
import socket
import sys
from pathlib import Path
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TextIO

import attrs
import trio

from voicebridge.config import Config
from voicebridge.business import SCHEMAS, build_job, job_name
from voicebridge.edges.call_audio import recording_path
from voicebridge.jobs.appointments.records import get_booking
from voicebridge.jobs.appointments.words import say_when
from voicebridge.jobs.pizza.menu import format_money
from voicebridge.jobs.pizza.records import get_order
from voicebridge.ops import staff_store
from voicebridge.ops.store import Store
from voicebridge.peers.scenario import Scenario, ScenarioError, load_scenario

DEMO_PUBLIC_URL = "https://voicebridge-demo.invalid"  # a reserved name: never resolves, never leaves the machine
ROLE = {"caller": "caller", "assistant": "AI    "}
DEFAULT_SCENARIO = {"pizza": "demo", "appointments": "appointments"}  # `voicebridge demo [--job JOB]`


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LiveView:
    """Prints what happens in a call as it happens (transcripts, barge-ins, tools, the order)."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.t0: float | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, call_sid: str, kind: str, fields: dict[str, Any]) -> None:
        self.events.append((kind, fields))
        if self.t0 is None:
            self.t0 = trio.current_time()
        line = self.describe(kind, fields)
        if line and not self.quiet:
            print(f"  {trio.current_time() - self.t0:6.2f}s  {line}", file=self.out, flush=True)

    @staticmethod
    def describe(kind: str, f: dict[str, Any]) -> str | None:
        if kind == "transcript":
            return f"{ROLE.get(f['role'], f['role'])}: {f['text']}"
        if kind == "barge_in":
            cuts = ", ".join(f"{ms} ms of {item}" for item, ms in f.get("truncated", [])) or "nothing heard yet"
            return f"** barge-in: the caller talked over the AI; audio cleared, answer cut after {cuts}"
        if kind == "tool":
            return f"-- tool {f['name']}: {'ok' if f['ok'] else 'rejected'}" + (f" ({f['intent']})" if f.get("intent") else "")
        if kind == "state":
            return f"-- state: {f['state']}"
        if kind == "committed" and "total_cents" in f:
            return (f"== order #{f['id']} saved: subtotal {format_money(f['subtotal_cents'])}, tax "
                    f"{format_money(f['tax_cents'])}, total {format_money(f['total_cents'])}")
        if kind == "committed" and "change" in f:
            return f"== booking #{f['id']} {f['change']}: {f['service']} on {f['when']}, for {f['customer']}"
        if kind == "committed":
            return f"== #{f['id']} saved: " + ", ".join(f"{k} {v}" for k, v in f.items() if k != "id")
        if kind == "first_audio":
            return f"-- first greeting audio {f['ms']:.1f} ms after the stream started"
        if kind in ("realtime_lost", "realtime_restored", "dtmf", "transfer", "silence", "response_stalled"):
            return f"-- {kind.replace('_', ' ')} {f if f else ''}".rstrip()
        if kind == "ended":
            return f"== call ended: {f['outcome']}, estimated cost ${f['cost_usd']}"
        return None


@attrs.define
class DemoResult:
    outcome: str | None
    order_id: int | None
    delivery_state: str | None
    twilio_outcome: str
    events: list[tuple[str, dict[str, Any]]]
    recording: Path | None = None  # the call's local stereo WAV (caller left, AI as heard right)


@attrs.frozen
class StaffDemo:
    """`voicebridge demo --staff`: the staff page on the demo's port, with a one-time login."""

    wait_s: float = 120.0  # how long the call waits for a staff page to be opened
    linger_s: float | None = None  # how long the page stays up after the call (None: until Ctrl-C)
    announce: Callable[[str, str, str], None] | None = None  # (url, name, password), for tests


async def run_demo_async(config: Config, scenario: Scenario, *, out: TextIO = sys.stdout, quiet: bool = False,
                         realtime_speed: float = 4.0, staff: StaffDemo | None = None) -> DemoResult:
    from voicebridge.daemon import Daemon, serve_daemon
    from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
    from voicebridge.peers.twilio_caller import place_call
    from voicebridge.peers.webhook_receiver import serve_webhook_receiver
    from voicebridge.ops.store import Store

    if config.job is None:
        config = attrs.evolve(config, job=scenario.job)
    if config.business_file is None and scenario.business is not None:
        config = attrs.evolve(config, business_path=scenario.business_path())
    job = build_job(config)
    view = LiveView(out, quiet)
    async with trio.open_nursery() as nursery:
        receiver = None
        if config.order_webhook_url is None:
            secret = config.order_webhook_secret or secrets.token_hex(16)
            receiver = await nursery.start(lambda task_status: serve_webhook_receiver(
                secret=secret, announce=lambda line: print(f"  webhook: {line}", file=out, flush=True),
                task_status=task_status))
            config = attrs.evolve(config, order_webhook_url=receiver.url, order_webhook_secret=secret)
        peer = RealtimePeer(scenario, speed=realtime_speed)
        realtime_url = await nursery.start(lambda task_status: serve_realtime_peer(peer, task_status=task_status))
        port = free_port()
        # Twilio only speaks to https/wss origins: the daemon believes it is DEMO_PUBLIC_URL (behind a
        # TLS proxy), and the local caller maps that origin to the loopback port, as a proxy would.
        # The demo always records the call locally (it is offline: there is no Twilio recording to make).
        config = attrs.evolve(config, host="127.0.0.1", port=port, public_url=DEMO_PUBLIC_URL,
                              realtime_url=realtime_url, openai_api_key=config.openai_api_key or "local-peer",
                              allow_unsigned=config.twilio_auth_token is None,
                              audio_recording=config.audio_recording | {"local"})
        store = await Store.open(config.db_path, schemas=SCHEMAS)
        login: str | None = None
        try:
            daemon = Daemon(config, job=job, store=store)
            daemon.observers.append(view)
            stop = trio.Event()
            await nursery.start(lambda task_status: serve_daemon(daemon, shutdown=stop, task_status=task_status))
            print(f"voicebridge demo: scenario {scenario.name!r}: {scenario.description}", file=out)
            print(f"  daemon on 127.0.0.1:{port} (as {DEMO_PUBLIC_URL}), local Realtime server on {realtime_url}, "
                  f"records in {store.path}", file=out, flush=True)
            if staff is not None and job.name != "pizza":
                print(f"  no staff page: it is the pizza shop's, and this is a {job.name} call", file=out, flush=True)
                staff = None
            if staff is not None:
                login = await open_staff_page(daemon, port, staff, out)
            with trio.fail_after(scenario.max_s + 30):
                result = await place_call(f"http://127.0.0.1:{port}", scenario, public_url=DEMO_PUBLIC_URL,
                                          auth_token=config.twilio_auth_token)
            print(f"  Twilio continues the call with: {result.outcome}", file=out, flush=True)
            recording: Path | None = recording_path(config.audio_recording_dir, daemon.businesses.default.slug,
                                                    result.call_sid)
            if recording is not None and recording.is_file():
                print(f"  the call's recording (caller left, what the caller heard right): {recording}",
                      file=out, flush=True)
            else:
                recording = None
            order_id = daemon_order_id(view)
            state = None
            if order_id is not None:
                subject = f"{'booking' if job.name == 'appointments' else 'order'}:{order_id}"
                with trio.move_on_after(15):
                    while True:
                        row = await store.outbox_for(subject)
                        state = row.state if row is not None else None
                        if state != "pending":
                            break
                        await trio.sleep(0.1)
                await print_committed(store, job.name, order_id, state, config, out)
            outcome = next((f["outcome"] for k, f in reversed(view.events) if k == "ended"), None)
            if staff is not None:
                print("  the staff page stays up" + (f" for {staff.linger_s:g} s" if staff.linger_s is not None else "")
                      + "; Ctrl-C to stop", file=out, flush=True)
                with trio.move_on_after(staff.linger_s if staff.linger_s is not None else float("inf")):
                    while not daemon.draining:  # Ctrl-C: the daemon drains
                        await trio.sleep(0.2)
            stop.set()
        finally:
            if login is not None:
                await store.commit(lambda tx: staff_store.remove_account(tx, login, datetime.now(timezone.utc)))
            await store.aclose()
        nursery.cancel_scope.cancel()
    return DemoResult(outcome, order_id, state, result.outcome, view.events, recording)


async def print_committed(store: Store, job: str, committed_id: int, state: str | None, config: Config,
                          out: TextIO) -> None:
    """What the call's commit stored: the order with its total, or the booking as `voicebridge bookings` shows it."""
    if job == "appointments":
        booking = await store.read(lambda tx: get_booking(tx, committed_id))
        if booking is not None:
            r = booking.row
            from zoneinfo import ZoneInfo

            print(f"  booking #{committed_id} in {store.path}: {r.status}, {r.service_name} on "
                  f"{say_when(r.start.astimezone(ZoneInfo(r.time_zone)))} ({r.start.astimezone(ZoneInfo(r.time_zone)).isoformat()}, "
                  f"{r.time_zone}) for {r.customer}, webhook delivery: {state}", file=out)
        return
    detail = await store.read(lambda tx: get_order(tx, committed_id))
    if detail is not None:
        print(f"  order #{committed_id} in {store.path}: total "
              f"{format_money(detail.total_cents)}, webhook delivery: {state}", file=out)


def choose(config: Config, scenario: str | None, job: str | None) -> tuple[Config, Scenario]:
    """The demo's job and scenario: `--job`, else the scenario's job, else the configured one."""
    if scenario is not None:
        chosen = load_scenario(scenario)
        if job is not None and job != chosen.job:
            raise ScenarioError(f"scenario {chosen.name!r} is a {chosen.job} call, not {job}")
        job = chosen.job
    else:
        job = job or job_name(config)
        chosen = load_scenario(DEFAULT_SCENARIO[job])
    if config.business_file is not None and job_name(attrs.evolve(config, job=None)) != job:
        print(f"voicebridge demo: {config.business_file} is not a business file for {job}; using the packaged example",
              file=sys.stderr)
        config = attrs.evolve(config, business_path=None, menu_path=None)
    return attrs.evolve(config, job=job), chosen


async def open_staff_page(daemon: Any, port: int, staff: StaffDemo, out: TextIO) -> str:
    """Add a one-time staff login, print the page's address and the login, and wait (bounded) for the page."""
    from voicebridge.edges.staff.auth import hash_password

    name, password = f"demo-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    now = datetime.now(timezone.utc)
    await daemon.store.commit(lambda tx: staff_store.add_account(
        tx, name, hash_password(password), now, expires_at=now + timedelta(hours=12)))
    url = f"http://127.0.0.1:{port}/staff/"
    print(f"  staff page: {url}  (log in as {name} / {password}; this login is removed when the demo ends)",
          file=out, flush=True)
    if staff.announce is not None:
        staff.announce(url, name, password)
    print(f"  the call starts when the staff page is open (or in {staff.wait_s:g} s)", file=out, flush=True)
    with trio.move_on_after(staff.wait_s):
        while daemon.staff_hub.subscribers == 0:
            await trio.sleep(0.1)
    await trio.sleep(1.0)  # the page shows the call from its first word
    return name


def daemon_order_id(view: LiveView) -> int | None:
    for kind, fields in view.events:
        if kind == "committed":
            return int(fields["id"])
    return None


def run_demo(config: Config, *, scenario: str | None = None, job: str | None = None, quiet: bool = False,
             staff: StaffDemo | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="  [%(levelname)s] %(name)s: %(message)s")
    config, chosen = choose(config, scenario, job)
    if config.twilio_auth_token is None:
        print("voicebridge demo: no TWILIO_AUTH_TOKEN, so the local caller's requests are unsigned "
              "(VOICEBRIDGE_ALLOW_UNSIGNED=1 for this run only)", file=sys.stderr)
    result = trio.run(lambda: run_demo_async(config, chosen, quiet=quiet, staff=staff))
    noun = "booking" if config.job == "appointments" else "order"
    print(f"voicebridge demo: call outcome {result.outcome}; {noun} "
          f"{'#' + str(result.order_id) if result.order_id is not None else 'none'}; webhook "
          f"{result.delivery_state or 'n/a'}")
    return 0 if result.outcome is not None else 1
