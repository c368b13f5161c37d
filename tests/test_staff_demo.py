"""`voicebridge demo --staff`: the demo prints the staff page's address and a one-time login, starts
the call once a page is open, the page's stream shows the order, and the login is gone afterwards."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import trio
from staff_shop import SCENARIO, staff_login

from voicebridge.business import SCHEMAS
from voicebridge.config import Config
from voicebridge.edges.staff.auth import COOKIE
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import Store
from voicebridge.peers.demo import StaffDemo, run_demo_async
from voicebridge.peers.scenario import load_scenario


async def test_demo_with_staff_page_shows_the_order_on_the_board_stream(tmp_path: Path) -> None:
    logins: list[tuple[str, str, str]] = []
    seen: list[str] = []
    out = io.StringIO()
    config = Config(db_path=tmp_path / "demo.sqlite3")

    async def watch_board() -> None:
        while not logins:
            await trio.sleep(0.05)
        url, name, password = logins[0]
        base = url.removesuffix("/staff/")
        async with httpx.AsyncClient(base_url=base) as http:
            r = await staff_login(http, name, password)
            assert r.status_code == 302
            cookie = {"Cookie": COOKIE + "=" + r.headers["set-cookie"].split(";")[0].split("=", 1)[1]}
            async with http.stream("GET", "/staff/events", headers=cookie) as stream:
                async for line in stream.aiter_lines():  # the call starts now that a page is open
                    if line.startswith("event: "):
                        seen.append(line[7:])
                    if line.startswith("data: ") and '"action":"committed"' in line:
                        seen.append("order #1" if '"id":1' in line else line)
                        return

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_board)
            result = await run_demo_async(config, load_scenario(str(SCENARIO)), out=out, realtime_speed=8.0,
                                          staff=StaffDemo(wait_s=20, linger_s=0.2,
                                                          announce=lambda *login: logins.append(login)))
    assert result.outcome == "completed" and result.order_id == 1
    assert "call" in seen and seen[-1] == "order #1"
    url, name, password = logins[0]
    text = out.getvalue()
    assert f"staff page: {url}  (log in as {name} / {password};" in text
    assert "the staff page stays up for 0.2 s; Ctrl-C to stop" in text
    store = await Store.open(config.db_path, schemas=SCHEMAS)
    try:
        assert await store.read(lambda tx: ss.get_account(tx, name)) is None  # the one-time login is gone
    finally:
        await store.aclose()
