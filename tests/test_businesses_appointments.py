"""Appointments in a many-business deployment: a salon's business file, its bookings kept apart
from every other business's, its own CalDAV calendar (Radicale on 127.0.0.1, read back by an
independent client) and its own iCalendar feed; a pizza number and a salon number answered by one
daemon through real calls from the local peers."""

from __future__ import annotations

import datetime as dt
import json
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import attrs
import icalendar
import pytest
import trio

from appointments_helpers import NOW, TZ
from caldav_server import PASSWORD, USER, Radicale, put_by_hand, stored_events
from test_businesses import LUIGI, PUBLIC, TOKEN, business_file
from voicebridge.business import SCHEMAS, Businesses, BusinessError
from voicebridge.cli import main
from voicebridge.config import Config, environment
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.edges.web import create_app
from voicebridge.jobs.appointments.business import load_business
from voicebridge.jobs.appointments.records import booked_between, list_bookings
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import place_call

SALON_TEXT = resources.files("voicebridge.jobs.appointments").joinpath("default_business.toml").read_text()
CUT = "+15550000011"
SHEAR = "+15550000012"
CALLER = "+15551230001"
CUT_FEED = "cut-above-feed-token-0123456789"
SHEAR_FEED = "shear-joy-feed-token-0123456789"
HAND_BOOKED = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//A person's calendar app//EN
BEGIN:VEVENT
UID:walk-in@person.example
DTSTAMP:20261201T120000Z
DTSTART;TZID=America/New_York:20261208T100000
DTEND;TZID=America/New_York:20261208T110000
SUMMARY:Walk-in colour
END:VEVENT
END:VCALENDAR
"""


def salon_file(folder: Path, name: str, head: str, *, shop: str) -> Path:
    """A salon's business file: deployment keys first, then the packaged salon's settings renamed."""
    folder.mkdir(exist_ok=True)
    body = SALON_TEXT.replace('name = "Cut Above Hair Studio"', f'name = "{shop}"')
    # the deployment's keys must come before the settings' first table; a [calendar] table after them
    top, _, tables = body.partition("\n[")
    calendar, _, rest = head.partition("[calendar]")
    text = top + "\n" + calendar + "\n[" + tables + ("\n[calendar]" + rest if rest else "")
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def calendar_table(url: str, password_env: str, feed_env: str | None = None) -> str:
    return (f'[calendar]\nurl = "{url}"\nusername = "{USER}"\npassword_env = "{password_env}"\n'
            + (f'feed_token_env = "{feed_env}"\n' if feed_env else ""))


# -- business files ----------------------------------------------------------------------------


def test_a_salon_business_file_is_an_appointments_business_next_to_a_pizza_one(tmp_path: Path) -> None:
    folder = tmp_path / "businesses"
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\ntransfer_number = "+15553330003"\nvoice = "sage"\n'
                              'instructions = "Mention the free coffee."\n', shop="Cut Above")
    business_file(folder, "luigis", f'numbers = ["{LUIGI}"]\ntransfer_number = "+15551110001"\n', shop="Luigi's Pizza")
    businesses = Businesses.load(Config(businesses=(folder,)))
    cut, luigi = businesses.get("cut"), businesses.get("luigis")
    assert cut is not None and luigi is not None
    assert businesses.for_number(CUT) is cut and businesses.for_number(LUIGI) is luigi
    assert cut.job.name == "appointments" and luigi.job.name == "pizza"
    assert cut.job.business_name == "Cut Above"
    assert cut.job.business.services == load_business(None).services  # type: ignore[attr-defined]
    assert (cut.config.transfer_number, cut.config.voice) == ("+15553330003", "sage")
    assert cut.job.instructions(NOW).endswith("Mention the free coffee.")
    assert "Cut Above" in cut.job.instructions(NOW)


@pytest.mark.parametrize(("head", "extra", "message"), [
    (f'numbers = ["{CUT}"]\n', ("minutes = 30", "minutes = 0"), "cut.toml: services.haircut.minutes: expected whole minutes"),
    (f'numbers = ["{CUT}"]\n', ('time_zone = "America/New_York"', 'time_zone = "Mars/Olympus"'),
     "cut.toml: time_zone: 'Mars/Olympus' is not a known time zone"),
    (f'numbers = ["{CUT}"]\n[calendar]\nurl = "https://dav.example.com/c/"\nusername = "u"\npassword = "hunter2"\n',
     None, "cut.toml: calendar.password: unknown key"),
    (f'numbers = ["{CUT}"]\n[calendar]\nurl = "https://dav.example.com/c/"\nusername = "u"\n'
     'password_env = "VB_TEST_UNSET_PASSWORD"\n', None,
     "cut.toml: calendar.password_env: the environment variable VB_TEST_UNSET_PASSWORD is not set"),
    (f'numbers = ["{CUT}"]\n[calendar]\nurl = "https://dav.example.com/c/"\nusername = "u"\n', None,
     "cut.toml: calendar.password_env: needed with the other"),
    (f'numbers = ["{CUT}"]\n[calendar]\nfeed_token_env = "VB_TEST_SHORT_TOKEN"\n', None,
     "cut.toml: calendar.feed_token_env: VB_TEST_SHORT_TOKEN must be at least 20"),
])
def test_a_bad_salon_file_names_the_file_and_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head: str,
                                                     extra: tuple[str, str] | None, message: str) -> None:
    monkeypatch.delenv("VB_TEST_UNSET_PASSWORD", raising=False)
    monkeypatch.setenv("VB_TEST_SHORT_TOKEN", "short")
    path = salon_file(tmp_path / "businesses", "cut", head, shop="Cut Above")
    if extra is not None:
        path.write_text(path.read_text().replace(*extra, 1))
    with pytest.raises(BusinessError) as info:
        Businesses.load(Config(businesses=(path,)))
    assert message in str(info.value) and "hunter2" not in str(info.value)


def test_a_pizza_business_has_no_calendar_and_two_feeds_cannot_share_a_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pizza = business_file(tmp_path, "luigis", f'numbers = ["{LUIGI}"]\n[calendar]\nurl = "https://dav.example.com/c/"\n')
    with pytest.raises(BusinessError, match="luigis.toml: calendar: only an appointments business has a calendar"):
        Businesses.load(Config(businesses=(pizza,)))
    monkeypatch.setenv("SALON_FEED", CUT_FEED)
    folder = tmp_path / "salons"
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\n[calendar]\nfeed_token_env = "SALON_FEED"\n', shop="Cut Above")
    salon_file(folder, "shear", f'numbers = ["{SHEAR}"]\n[calendar]\nfeed_token_env = "SALON_FEED"\n', shop="Shear Joy")
    with pytest.raises(BusinessError, match="shear.toml: calendar.feed_token_env: the same token as .*cut.toml"):
        Businesses.load(Config(businesses=(folder,)))


def test_the_calendar_variables_come_from_the_environment_or_the_env_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` stops with one line naming the file and key while the variable is unset anywhere; a
    `--env-file` (or `.env`) may hold it, as it holds every other secret."""
    folder = tmp_path / "businesses"
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\n' + calendar_table("https://dav.example.com/cut/", "VB_CUT_PW"),
               shop="Cut Above")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VB_CUT_PW", raising=False)
    for name, value in {"OPENAI_API_KEY": "k", "PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": TOKEN,
                        "VOICEBRIDGE_BUSINESSES": str(folder)}.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "cut.toml: calendar.password_env: the environment variable VB_CUT_PW is not set" in err
    env_file = tmp_path / "salon.env"
    env_file.write_text("VB_CUT_PW=from-the-env-file\n")
    config = Config(businesses=(folder,))
    cut = Businesses.load(config, environment(env_file=env_file)).get("cut")
    assert cut is not None and cut.config.caldav_password == "from-the-env-file"
    assert cut.config.caldav_url == "https://dav.example.com/cut/" and cut.config.caldav_username == USER


# -- two salons, two calendars -------------------------------------------------------------------


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-businesses"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "salons.sqlite3", schemas=SCHEMAS)
    yield s
    await s.aclose()


async def book(daemon: Daemon, slug: str, call_sid: str, when: str, name: str) -> Any:
    """What a call to `slug` does: the lookup before the tool, the tool, and the commit on a yes."""
    business = daemon.businesses.get(slug)
    assert business is not None
    prepare = daemon.setups[slug].prepare_tool
    assert prepare is not None
    task = business.job.new_task(CALLER)
    args = json.dumps({"service": "haircut", "date": "2026-12-08", "time": when, "name": name})
    await prepare(task, "book_appointment", args)
    result = business.job.run_tool(task, "book_appointment", args, NOW)
    if not result.ok:
        return result.output["error"]
    return await daemon.store.commit(lambda tx: business.job.commit(tx, call_sid, task, NOW), business=slug)


async def test_two_salons_keep_their_own_books_calendars_and_feeds(
        tmp_path: Path, radicale: Radicale, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    cut_url, shear_url = radicale.new_calendar(), radicale.new_calendar()
    await put_by_hand(cut_url, "walk-in.ics", HAND_BOOKED)  # 10-11 am at Cut Above only
    monkeypatch.setenv("CUT_CALDAV_PASSWORD", PASSWORD)
    monkeypatch.setenv("SHEAR_CALDAV_PASSWORD", PASSWORD)
    monkeypatch.setenv("CUT_FEED_TOKEN", CUT_FEED)
    monkeypatch.setenv("SHEAR_FEED_TOKEN", SHEAR_FEED)
    folder = tmp_path / "businesses"
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\n' + calendar_table(cut_url, "CUT_CALDAV_PASSWORD", "CUT_FEED_TOKEN"),
               shop="Cut Above")
    salon_file(folder, "shear", f'numbers = ["{SHEAR}"]\n'
               + calendar_table(shear_url, "SHEAR_CALDAV_PASSWORD", "SHEAR_FEED_TOKEN"), shop="Shear Joy")
    config = Config(businesses=(folder,))
    daemon = Daemon(config, businesses=Businesses.load(config), store=store, wall_clock=lambda: NOW)
    assert sorted(daemon.calendars) == ["cut", "shear"] and daemon.calendar_outbox is not None

    # each salon's busy times come from its own calendar: the walk-in blocks 10:30 at Cut Above only
    assert "already taken" in await book(daemon, "cut", "CA1", "10:30", "Sam")
    assert (await book(daemon, "shear", "CA2", "10:30", "Sam")).id == 1
    # the same slot at both salons: two bookings; a second one at the same salon is refused
    assert (await book(daemon, "cut", "CA3", "14:00", "Ana")).id == 2
    assert (await book(daemon, "shear", "CA4", "14:00", "Bo")).id == 3
    assert "taken" in await book(daemon, "shear", "CA5", "14:15", "Cy")
    rows = await store.read(lambda tx: list_bookings(tx))
    assert [(r.id, r.business, r.customer) for r in rows] == [(3, "shear", "Bo"), (2, "cut", "Ana"),
                                                              (1, "shear", "Sam")]
    day = (dt.datetime(2026, 12, 8, tzinfo=TZ), dt.datetime(2026, 12, 9, tzinfo=TZ))
    assert [b.customer for b in await store.read(lambda tx: booked_between(tx, *day, business="cut"))] == ["Ana"]

    # one worker delivers each booking to its own salon's calendar, and only there
    assert await daemon.calendar_outbox.deliver_due() == 3
    cut_events = {str(e["summary"]): e for e in await stored_events(cut_url)}
    shear_events = {str(e["summary"]): e for e in await stored_events(shear_url)}
    assert sorted(cut_events) == ["Haircut: Ana", "Walk-in colour"]
    assert sorted(shear_events) == ["Haircut: Bo", "Haircut: Sam"]
    assert cut_events["Haircut: Ana"]["dtstart"].dt == dt.datetime(2026, 12, 8, 14, 0, tzinfo=TZ)
    assert shear_events["Haircut: Bo"]["dtstart"].dt == dt.datetime(2026, 12, 8, 14, 0, tzinfo=TZ)

    # each salon's feed, behind its own token, shows its own bookings
    app = create_app(daemon, feeds=tuple(daemon.calendar_feeds.values()))
    client = app.test_client()
    for token, shop, expected in ((CUT_FEED, "Cut Above", ["Haircut: Ana"]),
                                  (SHEAR_FEED, "Shear Joy", ["Haircut: Sam", "Haircut: Bo"])):
        response = await client.get(f"/calendar/{token}.ics")
        assert response.status_code == 200
        feed = icalendar.Calendar.from_ical(await response.get_data())
        assert str(feed["X-WR-CALNAME"]) == f"{shop} bookings"
        assert [str(e["summary"]) for e in feed.walk("VEVENT")] == expected
    assert (await client.get(f"/calendar/{CUT_FEED[:-1]}x.ics")).status_code == 404


async def test_a_salon_without_a_calendar_keeps_its_rows_for_the_feed_and_the_env_calendar_is_unused(
        tmp_path: Path, radicale: Radicale, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """VOICEBRIDGE_CALDAV_* is the zero-configuration business's: with business files, a salon with
    no [calendar] writes to no calendar (never to one another business's settings name)."""
    env_url, shear_url = radicale.new_calendar(), radicale.new_calendar()
    monkeypatch.setenv("SHEAR_CALDAV_PASSWORD", PASSWORD)
    folder = tmp_path / "businesses"
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\n', shop="Cut Above")
    salon_file(folder, "shear", f'numbers = ["{SHEAR}"]\n' + calendar_table(shear_url, "SHEAR_CALDAV_PASSWORD"),
               shop="Shear Joy")
    config = Config(businesses=(folder,), caldav_url=env_url, caldav_username=USER, caldav_password=PASSWORD)
    daemon = Daemon(config, businesses=Businesses.load(config), store=store, wall_clock=lambda: NOW)
    assert list(daemon.calendars) == ["shear"]
    assert (await book(daemon, "cut", "CA1", "14:00", "Ana")).id == 1
    assert (await book(daemon, "shear", "CA2", "14:00", "Bo")).id == 2
    assert daemon.calendar_outbox is not None and await daemon.calendar_outbox.deliver_due() == 1
    assert [str(e["summary"]) for e in await stored_events(shear_url)] == ["Haircut: Bo"]
    assert await stored_events(env_url) == []
    pending = await store.read(lambda tx: tx.execute(
        "SELECT business, state FROM outbox WHERE target = 'calendar' ORDER BY id"))
    assert [(r["business"], r["state"]) for r in pending] == [("cut", "pending"), ("shear", "delivered")]


# -- real calls: a pizza number and a salon number on one daemon -----------------------------------


@asynccontextmanager
async def pizza_and_salon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, RealtimePeer, str]]:
    folder = tmp_path / "businesses"
    folder.mkdir()
    business_file(folder, "luigis", f'numbers = ["{LUIGI}"]\ntransfer_number = "+15551110001"\n', shop="Luigi's Pizza")
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\ninstructions = "Mention the free coffee."\n', shop="Cut Above")
    peer = RealtimePeer(load_scenario("appointments"))
    async with trio.open_nursery() as nursery:
        realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
        port = free_port()
        config = Config(host="127.0.0.1", port=port, public_url=PUBLIC, realtime_url=realtime_url,
                        openai_api_key="test-key", twilio_auth_token=TOKEN, db_path=tmp_path / "vb.sqlite3",
                        businesses=(folder,))
        store = await Store.open(config.db_path, schemas=SCHEMAS)
        daemon = Daemon(config, businesses=Businesses.load(config), store=store, wall_clock=lambda: NOW)
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


async def test_calls_to_a_pizza_number_and_a_salon_number_each_run_their_own_job(tmp_path: Path) -> None:
    """The salon's number books a haircut (the row is the salon's); the pizza number gets the pizza menu."""
    with trio.fail_after(150):
        async with pizza_and_salon(tmp_path) as (daemon, peer, base):
            salon_call = await place_call(base, attrs.evolve(load_scenario("appointments"), to_number=CUT),
                                          public_url=PUBLIC, auth_token=TOKEN)
            assert salon_call.errors == []
            assert salon_call.report is not None and salon_call.report.custom_parameters["business"] == "cut"
            session = peer.connections[0].session_updates[0]
            assert "Cut Above" in session["instructions"] and "free coffee" in session["instructions"]
            assert "book_appointment" in json.dumps(session["tools"])
            booked = await daemon.store.read(lambda tx: list_bookings(tx))
            assert [(b.business, b.customer, b.service_name) for b in booked] == [("cut", "Sam", "haircut")]
            assert booked[0].start == dt.datetime(2026, 12, 8, 14, 0, tzinfo=TZ)

            peer.scenario = load_scenario("dtmf_transfer")
            pizza_call = await place_call(base, attrs.evolve(load_scenario("dtmf_transfer"), to_number=LUIGI),
                                          public_url=PUBLIC, auth_token=TOKEN)
            assert pizza_call.errors == [] and pizza_call.outcome == "dial"
            assert "+15551110001" in pizza_call.action.body  # Luigi's own transfer number
            session = peer.connections[-1].session_updates[0]
            assert "Luigi's Pizza" in session["instructions"] and "Cut Above" not in session["instructions"]
            assert "book_appointment" not in json.dumps(session["tools"])
            assert [c.business for c in await daemon.store.list_calls(business="cut")] == ["cut"]
            assert len(await daemon.store.list_calls(business="luigis")) == 1


def test_bookings_filter_by_business(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "vb.sqlite3"
    folder = tmp_path / "businesses"
    salon_file(folder, "cut", f'numbers = ["{CUT}"]\n', shop="Cut Above")
    salon_file(folder, "shear", f'numbers = ["{SHEAR}"]\n', shop="Shear Joy")

    async def fill() -> None:
        store = await Store.open(db, schemas=SCHEMAS)
        try:
            config = Config(businesses=(folder,))
            daemon = Daemon(config, businesses=Businesses.load(config), store=store, wall_clock=lambda: NOW)
            await book(daemon, "cut", "CA1", "14:00", "Ana")
            await book(daemon, "shear", "CA2", "14:00", "Bo")
        finally:
            await store.aclose()

    trio.run(fill)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    assert main(["bookings", "--business", "shear", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["customer"], r["business"]) for r in rows] == [("Bo", "shear")]
    assert main(["bookings", "--business", "nobody"]) == 0
    assert capsys.readouterr().out.strip() == "No bookings for nobody yet."
    assert main(["bookings"]) == 0
    text = capsys.readouterr().out
    assert "Ana [cut]" in text and "Bo [shear]" in text  # several businesses: each booking says whose it is
