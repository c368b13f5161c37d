"""The shop for the staff page's tests: the real daemon with its local peers on loopback, and a staff login."""

from __future__ import annotations

import secrets
import threading
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import httpx
import trio

from voicebridge.business import SCHEMAS, Businesses, build_job
from voicebridge.config import Config
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.edges.staff.auth import hash_password
from voicebridge.edges.staff.routes import LOGIN_COOKIE
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import Store
from voicebridge.peers.demo import DEMO_PUBLIC_URL, free_port
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import place_call
from voicebridge.peers.webhook_receiver import serve_webhook_receiver

SCENARIO = Path(__file__).parent / "scenarios" / "quick_pepperoni.toml"
STAFF = "counter"
PASSWORD = secrets.token_urlsafe(12)


async def staff_login(http: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    """Log in as a browser does: the form's GET sets the CSRF cookie, its POST sends it back with the field."""
    form = await http.get("/staff/login")
    assert form.status_code == 200
    kept = form.headers["set-cookie"].split(";")[0]
    assert kept.startswith(LOGIN_COOKIE + "=")
    token = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return await http.post("/staff/login", data={"name": name, "password": password, "csrf": token},
                           headers={"Cookie": kept})


@attrs.define
class Shop:
    """The real daemon and its local peers on loopback; the browser story places calls from its thread."""

    daemon: Daemon
    peer: RealtimePeer
    nursery: trio.Nursery
    scenario: Any
    port: int
    events: list[tuple[str, str, dict[str, Any]]] = attrs.Factory(list)
    results: list[Any] = attrs.Factory(list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def place(self, to_number: str | None = None) -> Any:
        """Place one call (to `to_number`, a business's, if given) and wait until the local caller has
        hung up; returns what Twilio was told."""
        scenario = self.scenario if to_number is None else attrs.evolve(self.scenario, to_number=to_number)
        with trio.fail_after(self.scenario.max_s + 20):
            result = await place_call(self.base, scenario, public_url=DEMO_PUBLIC_URL,
                                      auth_token=self.daemon.config.twilio_auth_token)
        self.results.append(result)
        return result

    def call(self) -> threading.Event:
        """(From the browser's thread) start one call now; the event is set when the caller has hung up."""
        done = threading.Event()

        async def one() -> None:
            try:
                await self.place()
            finally:
                done.set()

        trio.from_thread.run_sync(self.nursery.start_soon, one)
        return done


@asynccontextmanager
async def open_shop(tmp: Path, accounts: tuple[tuple[str, str, bool], ...] = (), **settings: Any) -> AsyncIterator[Shop]:
    """The shop; with `businesses=(folder,)` in `settings`, one deployment of several businesses.
    `accounts`: more staff logins as (name, business, operator), each with PASSWORD."""
    scenario = load_scenario(str(SCENARIO))
    stop = trio.Event()
    secret = secrets.token_hex(16)
    store: Store | None = None
    try:
        async with trio.open_nursery() as nursery:
            receiver = await nursery.start(lambda task_status: serve_webhook_receiver(secret=secret,
                                                                                      task_status=task_status))
            peer = RealtimePeer(scenario, speed=4.0)
            realtime_url = await nursery.start(lambda task_status: serve_realtime_peer(peer, task_status=task_status))
            port = free_port()
            config = Config(host="127.0.0.1", port=port, public_url=DEMO_PUBLIC_URL, realtime_url=realtime_url,
                            openai_api_key="local-peer", allow_unsigned=True, db_path=tmp / "shop.sqlite3",
                            order_webhook_url=receiver.url, order_webhook_secret=secret,
                            transfer_number="+15550001111", **settings)
            store = await Store.open(config.db_path, schemas=SCHEMAS)
            await store.commit(lambda tx: ss.add_account(tx, STAFF, hash_password(PASSWORD),
                                                         datetime.now(timezone.utc)))
            for name, business, operator in accounts:
                await store.commit(lambda tx, n=name, b=business, o=operator: ss.add_account(
                    tx, n, hash_password(PASSWORD), datetime.now(timezone.utc), business=b, operator=o))
            if config.businesses:
                daemon = Daemon(config, businesses=Businesses.load(config), store=store)
            else:
                daemon = Daemon(config, job=build_job(config), store=store)
            shop = Shop(daemon, peer, nursery, scenario, port)
            daemon.observers.append(lambda sid, kind, fields: shop.events.append((sid, kind, fields)))
            await nursery.start(lambda task_status: serve_daemon(daemon, shutdown=stop, task_status=task_status))
            try:
                yield shop  # a failing story's exception goes on up from here, never swallowed by a cancel
            finally:
                stop.set()
                with trio.move_on_after(10):
                    while not daemon.draining:
                        await trio.sleep(0.05)
                await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
    finally:
        if store is not None:
            await store.aclose()


