"""The staff page in a deployment of two businesses, over loopback against the real daemon with real
calls: each business's staff see only its orders and calls (board, event stream and its catch-up,
live calls, transcripts, the log), another business's order or call answers 404 and changes
nothing, the menu's day is each business's own, and an operator sees both."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
from staff_shop import PASSWORD, STAFF, Shop, open_shop, staff_login
from test_businesses import LUIGI, ROSA, two_businesses

from voicebridge.cli import main
from voicebridge.config import Config
from voicebridge.edges.staff.auth import COOKIE
from voicebridge.edges.staff.routes import LOGIN_COOKIE
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import Store

ACCOUNTS = (("ann", "luigis", False), ("bo", "rosa", False), ("op", "default", True))


async def session(http: httpx.AsyncClient, name: str) -> tuple[dict[str, str], str]:
    """(the session's Cookie header, its CSRF token) for staff login `name`."""
    r = await staff_login(http, name, PASSWORD)
    assert r.status_code == 302, r.text
    cookie = {"Cookie": COOKIE + "=" + r.headers["set-cookie"].split(";")[0].split("=", 1)[1]}
    page = await http.get("/staff/log", headers=cookie)
    return cookie, page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def stream_lines(http: httpx.AsyncClient, cookie: dict[str, str], lines: list[str], *, after: int = 0,
                       query: str = "") -> None:
    """Read the event stream into `lines` until cancelled."""
    async with http.stream("GET", f"/staff/events{query}", headers={**cookie, "Last-Event-ID": str(after)},
                           timeout=httpx.Timeout(5, read=None)) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            lines.append(line)


def order_ids(lines: list[str]) -> set[int]:
    return {json.loads(line[6:])["id"] for line in lines if line.startswith("data: ") and '"html"' in line}


def call_sids(lines: list[str]) -> set[str]:
    sids = set()
    for line in lines:
        if line.startswith("data: "):
            data = json.loads(line[6:])
            sids.update([data["sid"]] if "sid" in data else [c["sid"] for c in data.get("calls", [])])
    return sids


async def caught_up(http: httpx.AsyncClient, cookie: dict[str, str], query: str = "") -> list[str]:
    """Everything a stream sends on (re)connecting from event 0, read for a moment."""
    lines: list[str] = []
    with trio.move_on_after(1.5):
        await stream_lines(http, cookie, lines, query=query)
    return lines


async def test_each_business_staff_see_only_their_own_orders_and_calls(tmp_path: Path) -> None:
    folder = two_businesses(tmp_path / "businesses")
    with trio.fail_after(120):
        async with open_shop(tmp_path, accounts=ACCOUNTS, businesses=(folder,)) as shop, \
                httpx.AsyncClient(base_url=shop.base) as http:
            (ann, ann_csrf), (bo, _), (op, _) = [await session(http, n) for n in ("ann", "bo", "op")]
            ann_live: list[str] = []
            bo_live: list[str] = []
            async with trio.open_nursery() as watching:
                watching.start_soon(stream_lines, http, ann, ann_live)
                watching.start_soon(stream_lines, http, bo, bo_live)
                await trio.sleep(0.3)
                luigi_call = (await shop.place(LUIGI)).call_sid
                rosa_call = (await shop.place(ROSA)).call_sid
                await trio.sleep(0.5)
                watching.cancel_scope.cancel()
            luigi_order, rosa_order = await orders_by_business(shop)

            # live: each stream carried its own business's call and order, never the other's
            assert luigi_call in call_sids(ann_live) and rosa_call not in call_sids(ann_live)
            assert rosa_call in call_sids(bo_live) and luigi_call not in call_sids(bo_live)
            assert order_ids(ann_live) == {luigi_order} and order_ids(bo_live) == {rosa_order}
            # caught up from the start (Last-Event-ID: 0): the same
            assert order_ids(await caught_up(http, ann)) == {luigi_order}
            assert order_ids(await caught_up(http, bo)) == {rosa_order}

            board = (await http.get("/staff/", headers=ann)).text
            assert f'id="order-{luigi_order}"' in board and f'id="order-{rosa_order}"' not in board
            assert "Luigi&#39;s Pizza" in board and "Rosa" not in board
            calls = (await http.get("/staff/calls", headers=ann)).text
            assert luigi_call in calls and rosa_call not in calls
            assert (await http.get(f"/staff/calls/{luigi_call}", headers=ann)).status_code == 200
            assert (await http.get(f"/staff/calls/{rosa_call}", headers=ann)).status_code == 404
            log = (await http.get("/staff/log", headers=ann)).text
            assert f"order:{luigi_order}" in log or f"pizza:{luigi_order}" in log
            assert f"pizza:{rosa_order}" not in log and "staff:bo" not in log

            # another business's order: 404, as if it did not exist, and nothing changes
            before = await status_of(shop, rosa_order)
            for path, data in ((f"/staff/orders/{rosa_order}/status", {"to": "preparing"}),
                               (f"/staff/orders/{rosa_order}/status", {"to": "cancelled", "reason": "x"}),
                               (f"/staff/orders/{rosa_order}/resend", {})):
                r = await http.post(path, data={**data, "csrf": ann_csrf}, headers=ann)
                assert r.status_code == 404 and "does not exist" in r.text, path
            missing = await http.post("/staff/orders/999/status", data={"to": "preparing", "csrf": ann_csrf}, headers=ann)
            assert missing.status_code == 404 and missing.text.replace("999", "N") == r.text.replace(str(rosa_order), "N")
            assert await status_of(shop, rosa_order) == before == "confirmed"
            for action in ("takeover", "end"):
                assert (await http.post(f"/staff/calls/{rosa_call}/{action}", data={"csrf": ann_csrf},
                                        headers=ann)).status_code == 404
            own = await http.post(f"/staff/orders/{luigi_order}/status", data={"to": "preparing", "csrf": ann_csrf},
                                  headers=ann)
            assert own.status_code == 302 and await status_of(shop, luigi_order) == "preparing"

            # the menu's day is each business's own
            r = await http.post("/staff/menu/sold-out", data={"kind": "item", "key": "pepperoni", "sold_out": "1",
                                                              "csrf": ann_csrf}, headers=ann)
            assert r.status_code == 302
            luigis, rosas = shop.daemon.businesses.get("luigis"), shop.daemon.businesses.get("rosa")
            assert luigis is not None and rosas is not None
            assert luigis.job.day.current.sold_out_items == {"pepperoni"}  # type: ignore[attr-defined]
            assert rosas.job.day.current.sold_out_items == frozenset()  # type: ignore[attr-defined]
            assert "Back in" in (await http.get("/staff/menu", headers=ann)).text
            assert "Back in" not in (await http.get("/staff/menu", headers=bo)).text

            # the operator sees both, and one at a time with the switch
            board = (await http.get("/staff/", headers=op)).text
            assert f'id="order-{luigi_order}"' in board and f'id="order-{rosa_order}"' in board
            assert 'name="business"' in board  # the switch
            assert '<span class="whose">Rosa&#39;s Slices</span>' in board  # each card says whose, when all are shown
            only_rosa = (await http.get("/staff/?business=rosa", headers=op)).text
            assert f'id="order-{rosa_order}"' in only_rosa and f'id="order-{luigi_order}"' not in only_rosa
            assert 'class="whose"' not in only_rosa and 'class="whose"' not in (await http.get("/staff/", headers=bo)).text
            assert order_ids(await caught_up(http, op)) == {luigi_order, rosa_order}
            assert order_ids(await caught_up(http, op, "?business=rosa")) == {rosa_order}
            # staff cannot pick another business with the switch
            assert f'id="order-{rosa_order}"' not in (await http.get("/staff/?business=rosa", headers=ann)).text


async def orders_by_business(shop: Shop) -> tuple[int, int]:
    rows = await shop.daemon.store.read(lambda tx: tx.execute("SELECT id, business FROM orders ORDER BY id"))
    by = {r["business"]: r["id"] for r in rows}
    assert set(by) == {"luigis", "rosa"}, rows
    return by["luigis"], by["rosa"]


async def status_of(shop: Shop, order_id: int) -> str:
    rows = await shop.daemon.store.read(lambda tx: tx.execute("SELECT status FROM orders WHERE id = ?", (order_id,)))
    return str(rows[0]["status"])


async def test_a_login_post_without_the_forms_csrf_token_is_refused(tmp_path: Path) -> None:
    folder = two_businesses(tmp_path / "businesses")
    with trio.fail_after(30):
        async with open_shop(tmp_path, accounts=ACCOUNTS, businesses=(folder,)) as shop, \
                httpx.AsyncClient(base_url=shop.base) as http:
            form = await http.get("/staff/login")
            assert "Luigi" not in form.text and "Rosa" not in form.text  # nor whose numbers share it
            token = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            kept = {"Cookie": f"{LOGIN_COOKIE}={token}"}
            for data, headers in (({"name": "ann", "password": PASSWORD}, kept),  # no field
                                  ({"name": "ann", "password": PASSWORD, "csrf": token}, {}),  # no cookie
                                  ({"name": "ann", "password": PASSWORD, "csrf": token + "x"}, kept)):  # not its
                r = await http.post("/staff/login", data=data, headers=headers)
                assert r.status_code == 403 and COOKIE + "=" not in r.headers.get("set-cookie", "")
            events = await shop.daemon.store.read(lambda tx: ss.recent_events(tx, 20))
            assert "staff.login" not in [e.action for e in events]
            assert (await staff_login(http, "ann", PASSWORD)).status_code == 302
            # a login of a business this deployment does not serve (made before business files): told so
            r = await staff_login(http, STAFF, PASSWORD)
            cookie = {"Cookie": COOKIE + "=" + r.headers["set-cookie"].split(";")[0].split("=", 1)[1]}
            refused = await http.get("/staff/", headers=cookie)
            assert refused.status_code == 403 and "business 'default'" in refused.text and "order" not in refused.text


async def test_an_appointments_business_shows_a_clear_page_not_a_pizza_board(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_shop(tmp_path, accounts=(("dee", "default", False),), job="appointments") as shop, \
                httpx.AsyncClient(base_url=shop.base) as http:
            cookie, csrf = await session(http, "dee")
            for path in ("/staff/", "/staff/menu"):
                r = await http.get(path, headers=cookie)
                assert r.status_code == 200 and "appointments" in r.text and 'id="other-job"' in r.text
                assert "Sold out" not in r.text and "No open orders" not in r.text
            r = await http.post("/staff/menu/closed", data={"closed": "1", "csrf": csrf}, headers=cookie)
            assert r.status_code == 404


def test_staff_add_takes_a_business_and_refuses_an_unknown_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = two_businesses(tmp_path / "businesses")
    db = tmp_path / "vb.sqlite3"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    monkeypatch.setenv("VOICEBRIDGE_BUSINESSES", str(folder))
    monkeypatch.setattr("sys.stdin", _Lines(PASSWORD, PASSWORD, PASSWORD))
    assert main(["staff", "add", "ann", "--business", "nope", "--password-stdin"]) == 2
    err = capsys.readouterr().err
    assert "no business 'nope'" in err and "luigis, rosa" in err
    assert main(["staff", "add", "ann", "--business", "rosa", "--password-stdin"]) == 0
    assert main(["staff", "add", "op", "--operator", "--password-stdin"]) == 0
    assert main(["staff", "add", "first", "--password-stdin"]) == 0  # no --business: the first business

    async def accounts() -> list[ss.Account | None]:
        store = await Store.open(Config(db_path=db).db_path, schemas={"staff": ss.SCHEMA})
        try:
            return [await store.read(lambda tx, n=n: ss.get_account(tx, n)) for n in ("ann", "op", "first")]
        finally:
            await store.aclose()

    ann, op, first = trio.run(accounts)
    assert ann is not None and (ann.business, ann.operator) == ("rosa", False)
    assert op is not None and op.operator and op.sees("luigis") and op.sees("rosa")
    assert first is not None and first.business == "luigis" and not first.sees("rosa")


class _Lines:
    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    def readline(self) -> str:
        return self.lines.pop(0) + "\n"


async def test_the_migration_gives_what_was_there_to_the_default_business(db_target: Path | str) -> None:
    """Accounts, the log, sold-out marks and "closed now" from before businesses keep working (on
    SQLite and on PostgreSQL)."""
    from datetime import datetime, timezone

    db = db_target
    old = await Store.open(db, schemas={"staff": ss.SCHEMA[:1]})
    try:
        await old.commit(lambda tx: [
            tx.execute("INSERT INTO staff_accounts (name, password_hash, created_at) VALUES ('cook', 'h', 'now')"),
            tx.execute("INSERT INTO staff_events (at, actor, action, subject) VALUES"
                       " ('2025-01-01T00:00:00.000000Z', NULL, 'staff.added', 'staff:cook'),"
                       " ('2025-01-01T00:00:01.000000Z', NULL, 'committed', 'pizza:1')"),
            tx.execute("INSERT INTO staff_menu_day (kind, key) VALUES ('item', 'pepperoni')"),
            tx.execute("INSERT INTO staff_settings (name, value) VALUES ('closed', '1'), ('closed_message', 'Back at 5')"),
        ])
    finally:
        await old.aclose()
    store = await Store.open(db, schemas={"staff": ss.SCHEMA})
    try:
        cook = await store.read(lambda tx: ss.get_account(tx, "cook"))
        assert cook is not None and (cook.business, cook.operator) == ("default", False)
        day = await store.read(lambda tx: ss.availability(tx, "default"))
        assert day.sold_out_items == {"pepperoni"} and day.closed and day.closed_message == "Back at 5"
        assert await store.read(lambda tx: ss.availability(tx, "rosa")) == ss.Availability()
        seen = await store.read(lambda tx: ss.events_after(tx, 0, business="default"))
        assert [e.action for e in seen] == ["committed"]  # the account's event is the operators' only
        await store.commit(lambda tx: ss.set_sold_out(tx, "ann", "item", "pepperoni", True,
                                                      datetime.now(timezone.utc), "rosa"))
        assert (await store.read(lambda tx: ss.availability(tx, "rosa"))).sold_out_items == {"pepperoni"}
    finally:
        await store.aclose()
