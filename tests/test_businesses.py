"""Many businesses, one deployment: business files, the number called picks the business, each
business's calls and orders are its own and its deliveries go to its own webhook."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import httpx
import pytest
import trio
from twilio.request_validator import RequestValidator

from voicebridge.business import Businesses, BusinessError
from voicebridge.cli import main
from voicebridge.config import Config
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.ops.outbox import OutboxWorker
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import new_sid, place_call
from voicebridge.peers.webhook_receiver import Receiver, serve_webhook_receiver

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voicebridge-test.invalid"
LUIGI = "+15550000001"
ROSA = "+15550000002"
UNKNOWN = "+15559998877"
MENU_TEXT = resources.files("voicebridge.jobs.pizza").joinpath("default_menu.toml").read_text()


def business_file(folder: Path, name: str, head: str, *, shop: str | None = None) -> Path:
    """A business file: deployment keys first, then (optionally) its own menu inline."""
    text = head
    if shop is not None:
        text += "\n" + MENU_TEXT.replace('name = "Bridge Street Pizza"', f'name = "{shop}"')
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def two_businesses(folder: Path, luigi_webhook: str = "http://127.0.0.1:9/orders",
                   rosa_webhook: str = "http://127.0.0.1:9/orders") -> Path:
    folder.mkdir(exist_ok=True)
    business_file(folder, "luigis", f'''numbers = ["{LUIGI}"]
webhook_url = "{luigi_webhook}"
webhook_secret = "luigi-secret-0123456789"
transfer_number = "+15551110001"
voice = "cedar"
tax_rate = "10%"
instructions = "End every call with a cheerful ciao."
''', shop="Luigi's Pizza")
    business_file(folder, "rosas", f'''slug = "rosa"
numbers = ["{ROSA}"]
webhook_url = "{rosa_webhook}"
webhook_secret = "rosa-secret-0123456789ab"
transfer_number = "+15552220002"
''', shop="Rosa's Slices")
    return folder


def test_business_files_map_numbers_to_their_own_job_and_settings(tmp_path: Path) -> None:
    folder = two_businesses(tmp_path / "businesses")
    config = Config(businesses=(folder,), voice="marin", tax_rate_bp=800, transfer_number="+15559990000")
    businesses = Businesses.load(config)
    assert [b.slug for b in businesses] == ["luigis", "rosa"]
    luigi, rosa = businesses.for_number(LUIGI), businesses.for_number(ROSA)
    assert luigi is not None and rosa is not None
    assert businesses.for_number(UNKNOWN) is None  # no catch-all once businesses are configured
    assert (luigi.config.voice, luigi.config.tax_rate_bp, luigi.config.transfer_number) == ("cedar", 1000, "+15551110001")
    assert (rosa.config.voice, rosa.config.tax_rate_bp, rosa.config.transfer_number) == ("marin", 800, "+15552220002")
    now = datetime.now(timezone.utc)
    assert "Luigi's Pizza" in luigi.job.instructions(now) and "cheerful ciao" in luigi.job.instructions(now)
    assert "Rosa's Slices" in rosa.job.instructions(now) and "cheerful ciao" not in rosa.job.instructions(now)
    assert luigi.job.name == "pizza"


def test_without_business_files_one_default_business_answers_every_number() -> None:
    businesses = Businesses.load(Config())
    assert [b.slug for b in businesses] == ["default"]
    assert businesses.for_number(UNKNOWN) is businesses.for_number(None) is businesses.default


@pytest.mark.parametrize("head, message", [
    ('numbers = ["+15550000001"]\n', "number +...01 is also"),
    ('numbers = []\n', "numbers: expected a list"),
    ('numbers = ["555-1234"]\n', "numbers: expected an E.164 number"),
    ('slug = "Bad Slug"\nnumbers = ["+15550000003"]\n', "slug: expected 1-40 lowercase"),
    ('numbers = ["+15550000003"]\njob = "laundry"\n', "job: expected one of pizza"),
    ('numbers = ["+15550000003"]\nwebhook_url = "https://x.example/hook"\n', "webhook_secret: needed with webhook_url"),
    ('numbers = ["+15550000003"]\nvoice = "robot"\n', "voice: expected one of"),
    ('numbers = ["+15550000003"]\n[shop]\nname = "X"\n', "items: missing"),  # the menu's own checks
    ('numbers = ["+15550000003"\n', "not a valid TOML file"),
])
def test_a_bad_business_file_is_refused_with_its_name_and_the_reason(tmp_path: Path, head: str, message: str) -> None:
    folder = two_businesses(tmp_path / "businesses")
    bad = business_file(folder, "zz-bad", head)
    with pytest.raises(BusinessError) as info:
        Businesses.load(Config(businesses=(folder,)))
    assert str(bad) in str(info.value) and message in str(info.value)


def test_serve_stops_with_one_line_for_a_bad_business_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {"OPENAI_API_KEY": "k", "PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": TOKEN,
                        "VOICEBRIDGE_BUSINESSES": str(tmp_path / "missing")}.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    assert "VOICEBRIDGE_BUSINESSES: no such file or directory" in capsys.readouterr().err


# -- deliveries: each business's events to its own webhook, signed with its own secret ---------------


async def test_each_business_orders_go_to_its_own_webhook(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "vb.sqlite3")
    try:
        async with trio.open_nursery() as nursery:
            luigi_rx: Receiver = await nursery.start(partial(serve_webhook_receiver, secret="luigi-secret-0123456789"))
            rosa_rx: Receiver = await nursery.start(partial(serve_webhook_receiver, secret="rosa-secret-0123456789ab"))
            folder = two_businesses(tmp_path / "businesses", luigi_rx.url, rosa_rx.url)
            businesses = Businesses.load(Config(businesses=(folder,)))
            luigi, rosa = businesses.get("luigis"), businesses.get("rosa")
            assert luigi is not None and rosa is not None

            def commit(slug: str, customer: str) -> Any:
                def fn(tx: Any) -> int:
                    order_id = tx.insert(
                        "INSERT INTO orders (call_sid, created_at, customer, fulfillment, subtotal_cents, tax_cents,"
                        " total_cents, payload, business) VALUES (NULL, '2025-01-01T00:00:00.000000Z', ?, 'pickup',"
                        " 100, 8, 108, '{}', ?)", (customer, tx.business))
                    tx.enqueue("order.created", f"order:{order_id}", {"order_id": order_id, "customer": customer})
                    return order_id
                return store.commit(fn, business=slug)

            await commit("luigis", "Ann")
            await commit("rosa", "Bob")
            await commit("closed-shop", "Cy")  # a business no longer configured: its delivery waits
            routes = {b.slug: (b.config.order_webhook_url, b.config.order_webhook_secret) for b in businesses}
            worker = OutboxWorker(store, None, None, routes=routes, backoff_base_s=0.01, poll_s=0.5)  # type: ignore[arg-type]
            await nursery.start(worker.run)
            with trio.fail_after(10):
                while len(luigi_rx.received) + len(rosa_rx.received) < 2:
                    await trio.sleep(0.02)
            await trio.sleep(0.3)  # time enough for a wrong third delivery to show
            assert [p["customer"] for p in luigi_rx.received] == ["Ann"]  # its receiver checked its signature
            assert [p["customer"] for p in rosa_rx.received] == ["Bob"]
            waiting = await store.outbox_for("order:3")
            assert waiting is not None and waiting.state == "pending" and waiting.business == "closed-shop"
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


# -- the daemon picks the business by the number called ---------------------------------------------


@asynccontextmanager
async def daemon_with_businesses(tmp_path: Path) -> AsyncIterator[tuple[Daemon, RealtimePeer, str]]:
    peer = RealtimePeer(load_scenario("dtmf_transfer"))
    async with trio.open_nursery() as nursery:
        realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
        port = free_port()
        config = Config(host="127.0.0.1", port=port, public_url=PUBLIC, realtime_url=realtime_url,
                        openai_api_key="test-key", twilio_auth_token=TOKEN, db_path=tmp_path / "vb.sqlite3",
                        businesses=(two_businesses(tmp_path / "businesses"),))
        store = await Store.open(config.db_path)
        daemon = Daemon(config, businesses=Businesses.load(config), store=store)
        stop = trio.Event()
        await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
        try:
            yield daemon, peer, f"http://127.0.0.1:{port}"
        finally:
            stop.set()
            with trio.move_on_after(10):
                while not daemon.draining:
                    await trio.sleep(0.01)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    await store.aclose()


async def test_an_unknown_number_gets_a_polite_goodbye_and_no_menu(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with daemon_with_businesses(tmp_path) as (daemon, peer, base):
            params = {"CallSid": new_sid("CA"), "AccountSid": new_sid("AC"), "From": "+15551230001", "To": UNKNOWN,
                      "CallStatus": "ringing", "Direction": "inbound"}
            sig = RequestValidator(TOKEN).compute_signature(PUBLIC + "/incoming-call", params)
            async with httpx.AsyncClient(base_url=base) as http:
                resp = await http.post("/incoming-call", data=params, headers={"X-Twilio-Signature": sig})
                metrics = (await http.get("/metrics")).text
            assert resp.status_code == 200
            assert "not in service" in resp.text and "<Hangup />" in resp.text
            assert "<Connect" not in resp.text and "token" not in resp.text
            assert "voicebridge_unknown_numbers_total 1.0" in metrics
            await trio.sleep(0.2)
            assert peer.connections == []  # no Realtime session pre-warmed for it
            logged = [r for r in caplog.records if getattr(r, "event", None) == "unknown_number"]
            assert [r.to for r in logged] == ["+...77"]  # type: ignore[attr-defined]
            assert all(UNKNOWN not in r.getMessage() and UNKNOWN not in str(r.__dict__) for r in caplog.records)


async def test_a_call_placed_from_a_business_number_is_that_business(tmp_path: Path) -> None:
    """`voicebridge call`: Twilio's webhook has Direction=outbound-api, To the callee, From our caller ID."""
    with trio.fail_after(30):
        async with daemon_with_businesses(tmp_path) as (daemon, peer, base):
            params = {"CallSid": new_sid("CA"), "AccountSid": new_sid("AC"), "From": ROSA, "To": UNKNOWN,
                      "CallStatus": "in-progress", "Direction": "outbound-api"}
            sig = RequestValidator(TOKEN).compute_signature(PUBLIC + "/incoming-call", params)
            async with httpx.AsyncClient(base_url=base) as http:
                resp = await http.post("/incoming-call", data=params, headers={"X-Twilio-Signature": sig})
            assert '<Parameter name="business" value="rosa" />' in resp.text and "<Connect" in resp.text


async def test_a_call_runs_as_the_business_whose_number_was_called(tmp_path: Path) -> None:
    """Luigi's number: Luigi's menu, voice and words in the session, the call recorded as Luigi's,
    and 'talk to a person' dials Luigi's shop, not Rosa's."""
    with trio.fail_after(60):
        async with daemon_with_businesses(tmp_path) as (daemon, peer, base):
            scenario = attrs.evolve(load_scenario("dtmf_transfer"), to_number=LUIGI)
            result = await place_call(base, scenario, public_url=PUBLIC, auth_token=TOKEN)
            assert result.errors == []
            assert result.outcome == "dial" and "+15551110001" in result.action.body
            assert result.report is not None and result.report.custom_parameters["business"] == "luigis"
            session = peer.connections[0].session_updates[0]
            assert "Luigi's Pizza" in session["instructions"] and "cheerful ciao" in session["instructions"]
            assert "Rosa" not in session["instructions"]
            assert json.dumps(session).count('"cedar"') == 1
            calls = await daemon.store.list_calls(business="luigis")
            assert [c.call_sid for c in calls] == [result.call_sid]
            assert await daemon.store.list_calls(business="rosa") == []


async def test_a_token_minted_for_one_business_does_not_start_another(tmp_path: Path) -> None:
    """The business travels as a stream parameter, signed into the token: changing it refuses the stream."""
    from voicebridge.edges.security import StreamTokenError

    with trio.fail_after(30):
        async with daemon_with_businesses(tmp_path) as (daemon, peer, base):
            call_sid = new_sid("CA")
            token = daemon.tokens.mint(call_sid, bound="business=luigis")
            with pytest.raises(StreamTokenError) as info:
                await daemon.redeem_token(token, call_sid, "rosa")
            assert info.value.reason == "bad-signature"
            await daemon.redeem_token(token, call_sid, "luigis")  # the right business: accepted, once


def test_orders_and_calls_filter_by_business(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "vb.sqlite3"

    async def fill() -> None:
        store = await Store.open(db)
        try:
            now = datetime.now(timezone.utc)
            for sid, slug in (("CA" + "1" * 32, "luigis"), ("CA" + "2" * 32, "rosa")):
                await store.call_started(sid, stream_sid=None, from_number="+15551230001", to_number=LUIGI,
                                         direction="inbound", started_at=now, business=slug)
                await store.commit(lambda tx, slug=slug: tx.insert(
                    "INSERT INTO orders (call_sid, created_at, customer, fulfillment, subtotal_cents, tax_cents,"
                    " total_cents, payload, business) VALUES (NULL, '2025-01-01T00:00:00.000000Z', ?, 'pickup',"
                    " 100, 8, 108, '{}', ?)", (f"{slug}-customer", tx.business)), business=slug)
        finally:
            await store.aclose()

    trio.run(fill)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    assert main(["orders", "--business", "rosa", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["customer"], r["business"]) for r in rows] == [("rosa-customer", "rosa")]
    assert main(["calls", "--business", "luigis", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["call_sid"], r["business"]) for r in rows] == [("CA" + "1" * 32, "luigis")]
    assert main(["orders"]) == 0
    text = capsys.readouterr().out
    assert "[rosa]" in text and "[luigis]" in text  # several businesses: each order says whose it is
