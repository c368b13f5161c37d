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
    return await http.post("/staff/login", data={"name": name, "password": password})


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
            forged = await http.get("/staff/", cookies={COOKIE: "eyJuIjoiY29vayJ9.forged.sig"})
            assert forged.status_code == 302


async def test_a_post_with_a_wrong_or_missing_csrf_token_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (daemon, base), httpx.AsyncClient(base_url=base) as http:
            r = await login(http)
            assert r.status_code == 302 and r.headers["location"] == "/staff/"
            cookie = {COOKIE: session_cookie(r)}
            page = await http.get("/staff/menu", cookies=cookie)
            assert page.status_code == 200 and "Sold out" in page.text
            for token in (None, "wrong"):
                data = {"kind": "item", "key": "pepperoni", "sold_out": "1", **({"csrf": token} if token else {})}
                refused = await http.post("/staff/menu/sold-out", data=data, cookies=cookie)
                assert refused.status_code == 403
            assert (await daemon.store.read(ss.availability)).sold_out_items == frozenset()
            csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            ok = await http.post("/staff/menu/sold-out", cookies=cookie,
                                 data={"kind": "item", "key": "pepperoni", "sold_out": "1", "csrf": csrf})
            assert ok.status_code == 302
            assert (await daemon.store.read(ss.availability)).sold_out_items == {"pepperoni"}
            assert daemon.job.day.current.sold_out_items == {"pepperoni"}  # type: ignore[attr-defined]
            log = await http.get("/staff/log", cookies=cookie)
            assert "menu.sold_out" in log.text and "item:pepperoni" in log.text and "cook" in log.text


async def test_failed_logins_are_rate_limited_per_account(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with staff_daemon(tmp_path) as (_, base), httpx.AsyncClient(base_url=base) as http:
            for _ in range(5):
                assert (await login(http, password="wrong password")).status_code == 401
            limited = await login(http)  # even the right password waits now
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
            assert "set-cookie" not in limited.headers


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
            cookie = {COOKIE: session_cookie(await login(http))}
            for path in ["/staff/login", *PAGES[:2], "/staff/menu", "/staff/log"]:
                r = await http.get(path, cookies=cookie)
                csp = r.headers["content-security-policy"]
                assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
                assert r.headers["x-frame-options"] == "DENY"
                assert r.headers["cache-control"] == "no-store"
                assert "<script>" not in r.text and "style=" not in r.text
