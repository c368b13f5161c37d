"""The staff page's login rules, over loopback against the real daemon: no session shows nothing,
a wrong CSRF token is refused, failed logins are rate-limited, every page sends a strict CSP."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import trio
from staff_shop import staff_login

from voicebridge.business import SCHEMAS, build_job
from voicebridge.config import Config
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.edges.staff.auth import COOKIE, LoginLimiter, hash_password
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port

PASSWORD = "correct horse battery"
PAGES = ["/staff/", "/staff/calls", "/staff/calls/CA123", "/staff/menu", "/staff/log"]
POSTS = ["/staff/orders/1/status", "/staff/orders/1/resend", "/staff/calls/CA1/takeover", "/staff/calls/CA1/end",
         "/staff/menu/sold-out", "/staff/menu/closed", "/staff/logout"]


@asynccontextmanager
async def staff_daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, str]]:
    config = Config(host="127.0.0.1", port=free_port(), db_path=tmp_path / "vb.sqlite3", allow_unsigned=True,
                    public_url="https://voicebridge-test.invalid")
    store = await Store.open(config.db_path, schemas=SCHEMAS)
    await store.commit(lambda tx: ss.add_account(tx, "cook", hash_password(PASSWORD), datetime.now(timezone.utc)))
    daemon = Daemon(config, job=build_job(config), store=store)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
            try:
                yield daemon, f"http://127.0.0.1:{config.port}"
            finally:
                stop.set()
    finally:
        await store.aclose()


async def login(http: httpx.AsyncClient, name: str = "cook", password: str = PASSWORD) -> httpx.Response:
    return await staff_login(http, name, password)


def session_cookie(response: httpx.Response) -> str:
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "Secure" in header and "SameSite=Strict" in header
    return header.split(";")[0].split("=", 1)[1]


async def test_without_a_session_every_staff_url_redirects_or_answers_401(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (_, base), httpx.AsyncClient(base_url=base) as http:
            for path in PAGES:
                r = await http.get(path)
                assert r.status_code == 302 and r.headers["location"] == "/staff/login", path
                assert "order" not in r.text.lower()
            assert (await http.get("/staff/events")).status_code == 401
            for path in POSTS:
                r = await http.post(path, data={"to": "preparing"})
                assert r.status_code == 401, path
            forged = await http.get("/staff/", headers={"Cookie": COOKIE + "=eyJuIjoiY29vayJ9.forged.sig"})
            assert forged.status_code == 302


async def test_a_post_with_a_wrong_or_missing_csrf_token_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (daemon, base), httpx.AsyncClient(base_url=base) as http:
            r = await login(http)
            assert r.status_code == 302 and r.headers["location"] == "/staff/"
            cookie = {"Cookie": COOKIE + "=" + session_cookie(r)}
            page = await http.get("/staff/menu", headers=cookie)
            assert page.status_code == 200 and "Sold out" in page.text
            for token in (None, "wrong"):
                data = {"kind": "item", "key": "pepperoni", "sold_out": "1", **({"csrf": token} if token else {})}
                refused = await http.post("/staff/menu/sold-out", data=data, headers=cookie)
                assert refused.status_code == 403
            assert (await daemon.store.read(ss.availability)).sold_out_items == frozenset()
            csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            ok = await http.post("/staff/menu/sold-out", headers=cookie,
                                 data={"kind": "item", "key": "pepperoni", "sold_out": "1", "csrf": csrf})
            assert ok.status_code == 302
            assert (await daemon.store.read(ss.availability)).sold_out_items == {"pepperoni"}
            assert daemon.job.day.current.sold_out_items == {"pepperoni"}  # type: ignore[attr-defined]
            log = await http.get("/staff/log", headers=cookie)
            assert "menu.sold_out" in log.text and "item:pepperoni" in log.text and "cook" in log.text


async def test_failed_logins_are_rate_limited_per_account(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (_, base), httpx.AsyncClient(base_url=base) as http:
            for _ in range(5):
                assert (await login(http, password="wrong password")).status_code == 401
            limited = await login(http)  # even the right password waits now
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
            assert COOKIE + "=" not in limited.headers.get("set-cookie", "")  # no session


def test_the_limiter_counts_per_account_and_per_address_and_forgets_old_failures() -> None:
    now = [0.0]
    limiter = LoginLimiter(attempts=3, window_s=60, max_keys=4, clock=lambda: now[0])
    for _ in range(3):
        limiter.failed("cook", "10.0.0.1")
    assert limiter.retry_after("cook", "10.0.0.9") == pytest.approx(60)  # the account is locked
    assert limiter.retry_after("baker", "10.0.0.1") == pytest.approx(60)  # and so is the address
    assert limiter.retry_after("baker", "10.0.0.2") == 0
    now[0] = 61
    assert limiter.retry_after("cook", "10.0.0.1") == 0
    for n in range(10):
        limiter.failed(f"user{n}", f"10.1.0.{n}")
    assert len(limiter._failures) <= 4  # bounded memory


async def test_pages_send_a_strict_csp_no_framing_and_no_caching(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (_, base), httpx.AsyncClient(base_url=base) as http:
            cookie = {"Cookie": COOKIE + "=" + session_cookie(await login(http))}
            for path in ["/staff/login", *PAGES[:2], "/staff/menu", "/staff/log"]:
                r = await http.get(path, headers=cookie)
                csp = r.headers["content-security-policy"]
                assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
                assert r.headers["x-frame-options"] == "DENY"
                assert r.headers["cache-control"] == "no-store"
                assert "<script>" not in r.text and "style=" not in r.text


async def read_events(http: httpx.AsyncClient, cookie: dict[str, str], last_id: int | None, want: int) -> list[dict[str, str]]:
    """The first `want` stored events (those with an id) the stream sends after `last_id`."""
    headers = {**cookie, **({"Last-Event-ID": str(last_id)} if last_id is not None else {})}
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with http.stream("GET", "/staff/events", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line:
                key, _, value = line.partition(": ")
                current[key] = value
                continue
            if "id" in current:
                events.append(current)
                if len(events) == want:
                    break
            current = {}
    return events


async def test_the_event_stream_catches_up_from_last_event_id_with_nothing_missed_or_repeated(tmp_path: Path) -> None:
    from voicebridge.jobs.pizza.order import Order, OrderLine

    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (daemon, base), httpx.AsyncClient(base_url=base) as http:
            cookie = {"Cookie": COOKIE + "=" + session_cookie(await login(http))}  # event 1: the account was added; 2: the login
            for name in ("Sam", "Robin", "Kim"):
                order = Order.empty(caller_number="+15550100111")
                order.lines.append(OrderLine("pepperoni", "large", 1))
                order.customer_name, order.fulfillment = name, "pickup"
                await daemon._commit(f"CA{name}", order)  # what the caller's yes does: events 3, 4, 5
            first = await read_events(http, cookie, None, 5)
            assert [e["id"] for e in first] == ["1", "2", "3", "4", "5"]
            assert [e["event"] for e in first] == ["log", "log", "order", "order", "order"]
            assert "Robin" in first[3]["data"] and '"action":"committed"' in first[2]["data"]
            # The connection is lost after event 4; the browser reconnects with Last-Event-ID: 4.
            again = await read_events(http, cookie, 4, 1)
            assert [e["id"] for e in again] == ["5"] and "Kim" in again[0]["data"]
            bad = await http.get("/staff/events", headers={**cookie, "Last-Event-ID": "four"})
            assert bad.status_code == 400


async def test_staff_add_stores_only_an_argon2_hash_and_refuses_a_short_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from voicebridge.cli import build_parser

    config = Config(db_path=tmp_path / "vb.sqlite3")

    def run(*argv: str, stdin: str) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        args = build_parser().parse_args(list(argv))
        return int(args.func(args, config))

    assert await trio.to_thread.run_sync(lambda: run("staff", "add", "cook", "--password-stdin", stdin="short\n")) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert await trio.to_thread.run_sync(lambda: run("staff", "add", "cook", "--password-stdin", stdin=PASSWORD + "\n")) == 0
    assert await trio.to_thread.run_sync(lambda: run("staff", "add", "cook", "--password-stdin", stdin=PASSWORD + "\n")) == 1
    assert "already a staff account named 'cook'" in capsys.readouterr().err
    store = await Store.open(config.db_path, schemas=SCHEMAS)
    try:
        account = await store.read(lambda tx: ss.get_account(tx, "cook"))
    finally:
        await store.aclose()
    assert account is not None and account.password_hash.startswith("$argon2id$") and PASSWORD not in account.password_hash
