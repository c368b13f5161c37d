"""Live calls from the staff page, over loopback against the real daemon and its local peers: the
model is told of a sold-out item within a second, staff take a call over (Twilio dials the shop)
or end it (Twilio hangs up), each action is in the log, and an order marked ready is texted to the
customer through a local stand-in of Twilio's REST API."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from staff_shop import PASSWORD, STAFF, Shop, open_shop, staff_login
from test_outbound import ACCOUNT, FROM, TOKEN, FakeTwilio, Received, start_fake

from voicebridge.business import SCHEMAS
from voicebridge.daemon import DAY_FOLLOW_S
from voicebridge.edges.staff.auth import COOKIE
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import Store


async def staff_client(shop: Shop, http: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    r = await staff_login(http, STAFF, PASSWORD)
    cookie = {"Cookie": COOKIE + "=" + r.headers["set-cookie"].split(";")[0].split("=", 1)[1]}
    page = await http.get("/staff/menu", headers=cookie)
    return cookie, page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def live_call(shop: Shop) -> str:
    while not shop.daemon.live:
        await trio.sleep(0.02)
    return next(iter(shop.daemon.live))


def system_notes(shop: Shop) -> list[str]:
    return [part["text"] for conn in shop.peer.connections for item in conn.items_created
            if item.get("role") == "system" for part in item.get("content", [])]


async def test_a_sold_out_mark_reaches_the_live_call_and_take_over_dials_the_shop(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_shop(tmp_path) as shop, httpx.AsyncClient(base_url=shop.base) as http:
            cookie, csrf = await staff_client(shop, http)
            results: list[object] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _keep(results, shop.place()))
                sid = await live_call(shop)
                r = await http.post("/staff/menu/sold-out", headers={**cookie, "Accept": "application/json"},
                                    data={"kind": "item", "key": "margherita", "sold_out": "1", "csrf": csrf})
                assert r.status_code == 204
                with trio.fail_after(1):  # the model is told within a second
                    while not any("Sold out today: margherita pizza" in note for note in system_notes(shop)):
                        await trio.sleep(0.02)
                r = await http.post(f"/staff/calls/{sid}/takeover", headers=cookie, data={"csrf": csrf})
                assert r.status_code == 302
            assert results[0].outcome == "dial"  # type: ignore[attr-defined]
            assert await shop.daemon.outcome_of(sid) == "transferred"
            events = await shop.daemon.store.read(lambda tx: ss.recent_events(tx, 10))
            assert [(e.actor, e.action, e.subject) for e in events[:2]] == [
                (STAFF, "call.takeover", f"call:{sid}"), (STAFF, "menu.sold_out", "item:margherita")]
            gone = await http.post(f"/staff/calls/{sid}/end", headers=cookie, data={"csrf": csrf})
            assert gone.status_code == 404


async def test_a_mark_made_through_another_process_reaches_the_live_call(tmp_path: Path) -> None:
    """Another worker (or machine) wrote the mark: this one's live call hears of it from the shared
    store within DAY_FOLLOW_S and a little, and its job refuses the item from then on."""
    with trio.fail_after(60):
        async with open_shop(tmp_path) as shop:
            results: list[object] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _keep(results, shop.place()))
                await live_call(shop)
                other = await Store.open(shop.daemon.config.db_path, schemas=SCHEMAS)  # another process's store
                try:
                    await other.commit(lambda tx: ss.set_sold_out(tx, "elsewhere", "item", "pepperoni", True,
                                                                  datetime.now(timezone.utc)))
                finally:
                    await other.aclose()
                with trio.fail_after(DAY_FOLLOW_S + 1.5):
                    while not any("Sold out today: pepperoni pizza" in note for note in system_notes(shop)):
                        await trio.sleep(0.02)
                assert shop.daemon.job.day.current.sold_out_items == {"pepperoni"}  # type: ignore[attr-defined]


async def test_a_call_on_another_process_is_listed_and_taken_over_through_the_store(tmp_path: Path) -> None:
    """Staff's page is served by one worker, the call carried by another: the page lists it from the
    shared registry, and Take over leaves a request the carrying process takes; the log has it."""
    with trio.fail_after(60):
        async with open_shop(tmp_path) as shop, httpx.AsyncClient(base_url=shop.base) as http:
            cookie, csrf = await staff_client(shop, http)
            other = await Store.open(shop.daemon.config.db_path, schemas=SCHEMAS)  # the other worker's store
            try:
                await other.live_call_upsert("CAelsewhere0001", state="ordering", started_at=datetime.now(timezone.utc),
                                             business="default")
                lines: list[str] = []
                with trio.move_on_after(1.5):
                    async with http.stream("GET", "/staff/events", headers=cookie,
                                           timeout=httpx.Timeout(5, read=None)) as r:
                        async for line in r.aiter_lines():
                            lines.append(line)
                listed = next(json.loads(line[6:])["calls"] for line in lines if line.startswith("data: {\"calls\""))
                assert [(c["sid"], c["state"]) for c in listed] == [("CAelsewhere0001", "ordering")]
                r = await http.post("/staff/calls/CAelsewhere0001/takeover", headers=cookie, data={"csrf": csrf})
                assert r.status_code == 302
                asked = await other.read(lambda tx: tx.execute("SELECT call_sid, action FROM staff_call_actions"))
                assert [(a["call_sid"], a["action"]) for a in asked] == [("CAelsewhere0001", "transferred")]
                gone = await http.post("/staff/calls/CAnowhere000001/end", headers=cookie, data={"csrf": csrf})
                assert gone.status_code == 404  # carried by no process: nothing asked
                assert len(await other.read(lambda tx: tx.execute("SELECT * FROM staff_call_actions"))) == 1
            finally:
                await other.aclose()
            events = await shop.daemon.store.read(lambda tx: ss.recent_events(tx, 5))
            assert (events[0].actor, events[0].action, events[0].subject) == (STAFF, "call.takeover", "call:CAelsewhere0001")


async def test_a_take_over_asked_through_another_process_dials_the_shop(tmp_path: Path) -> None:
    """The other side: a request written by another worker's page ends this process's call as a
    transfer within a second or so, and is removed once taken."""
    with trio.fail_after(60):
        async with open_shop(tmp_path) as shop:
            results: list[object] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _keep(results, shop.place()))
                sid = await live_call(shop)
                other = await Store.open(shop.daemon.config.db_path, schemas=SCHEMAS)
                try:
                    await other.commit(lambda tx: ss.request_call_action(tx, sid, "transferred", datetime.now(timezone.utc)))
                finally:
                    await other.aclose()
            assert results[0].outcome == "dial"  # type: ignore[attr-defined]
            assert await shop.daemon.outcome_of(sid) == "transferred"
            assert await shop.daemon.store.read(lambda tx: tx.execute("SELECT * FROM staff_call_actions")) == []


async def test_ending_a_call_from_the_page_hangs_up(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_shop(tmp_path) as shop, httpx.AsyncClient(base_url=shop.base) as http:
            cookie, csrf = await staff_client(shop, http)
            results: list[object] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _keep(results, shop.place()))
                sid = await live_call(shop)
                r = await http.post(f"/staff/calls/{sid}/end", headers=cookie, data={"csrf": csrf})
                assert r.status_code == 302
            assert results[0].outcome == "hangup"  # type: ignore[attr-defined]
            assert await shop.daemon.outcome_of(sid) == "ended_by_staff"
            page = await http.get(f"/staff/calls/{sid}", headers=cookie)
            assert page.status_code == 200 and "ended_by_staff" in page.text


async def _keep(results: list[object], call: object) -> None:
    results.append(await call)  # type: ignore[misc]


class FakeTwilioMessages(FakeTwilio):
    """Twilio's `POST /2010-04-01/Accounts/{AC}/Messages.json`, on 127.0.0.1."""

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        if req.target != f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json":
            return 404, {"code": 20404, "message": "The requested resource was not found", "status": 404}
        return 201, {"sid": "SM" + "0" * 32, "account_sid": ACCOUNT, "status": "queued", "to": req.form["To"][0],
                     "from": req.form["From"][0], "body": req.form["Body"][0], "api_version": "2010-04-01"}


async def test_marking_an_order_ready_texts_the_customer_when_a_from_number_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    fake = FakeTwilioMessages()
    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            port = await start_fake(outer, fake)
            twilio = {"twilio_account_sid": ACCOUNT, "twilio_auth_token": TOKEN, "twilio_from_number": FROM,
                      "twilio_api_base_url": f"http://127.0.0.1:{port}"}
            async with open_shop(tmp_path, **twilio) as shop, httpx.AsyncClient(base_url=shop.base) as http:
                cookie, csrf = await staff_client(shop, http)
                await shop.place()
                for to in ("preparing", "ready"):
                    r = await http.post("/staff/orders/1/status", headers=cookie, data={"to": to, "csrf": csrf})
                    assert r.status_code == 302
                while not any(e.action == "order.text_sent" for e in
                              await shop.daemon.store.read(lambda tx: ss.recent_events(tx, 5))):
                    await trio.sleep(0.05)
                board = await http.get("/staff/", headers=cookie)
                assert "Text to the customer: sent" in board.text
            outer.cancel_scope.cancel()
    assert len(fake.received) == 1  # one text, only when the order became ready
    form = fake.received[0].form
    assert form["From"] == [FROM] and form["To"] == ["+15551230001"]
    assert form["Body"] == ["Bridge Street Pizza: your order #1 is ready for pickup. Thank you!"]
