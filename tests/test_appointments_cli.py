"""The appointments job end to end: the demo through the real daemon, the webhook on the wire,
and `voicebridge bookings` against a real database."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from appointments_helpers import CALLER, JOB, NOW, loaded, run
from voicebridge.business import SCHEMAS
from voicebridge.cli import main as cli_main
from voicebridge.config import Config
from voicebridge.jobs.appointments.booking import BookingRequest
from voicebridge.jobs.appointments.records import booked_between
from voicebridge.ops.outbox import OutboxWorker
from voicebridge.ops.store import Store
from voicebridge.peers.demo import run_demo_async
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.webhook_receiver import Receiver, serve_webhook_receiver

SECRET = "whsec-appointments-test"
TUESDAY = dt.date(2026, 12, 8)


async def test_demo_books_a_haircut_and_shows_the_read_back_the_booking_and_its_delivery(tmp_path: Path) -> None:
    """`voicebridge demo --job appointments`: tool calls, the read-back in words, the stored booking, the webhook."""
    out = io.StringIO()
    db = tmp_path / "demo.sqlite3"
    with trio.fail_after(90):
        result = await run_demo_async(Config(db_path=db), load_scenario("appointments"), out=out)
    text = out.getvalue()
    assert result.outcome == "completed" and result.twilio_outcome == "hangup" and result.order_id == 1
    assert "-- tool check_availability: ok" in text and "-- tool book_appointment: ok (review)" in text
    assert "-- tool confirm_booking: ok (confirm)" in text
    read_back = [line for line in text.splitlines() if "AI    : Here is what I have: a haircut on Tuesday the " in line]
    assert len(read_back) == 1 and read_back[0].endswith("at 2 pm, for Sam. It costs $25.00. Shall I book it?")
    when = read_back[0].split("a haircut on ")[1].split(", for Sam")[0]
    assert f"== booking #1 created: haircut on {when}, for Sam" in text
    assert "webhook: webhook received booking.created #1: haircut at " in text
    assert f"booking #1 in {db}: confirmed, haircut on {when} (" in text and "webhook delivery: delivered" in text
    assert result.delivery_state == "delivered"
    store = await Store.open(db, schemas=SCHEMAS)
    try:
        rows = await store.read(lambda tx: tx.execute("SELECT customer, service, status FROM bookings"))
    finally:
        await store.aclose()
    assert rows == [{"customer": "Sam", "service": "haircut", "status": "confirmed"}]


# -- the webhook on the wire -------------------------------------------------------------------


def booking_request(time: str = "14:00") -> BookingRequest:
    t = JOB.new_task(CALLER)
    t.found = loaded(TUESDAY)
    assert run(t, "book_appointment", service="haircut", date="2026-12-08", time=time, name="Sam").ok
    return t


async def book_move_cancel(store: Store) -> None:
    t = booking_request()
    await store.commit(lambda tx: JOB.commit(tx, "CA1", t, NOW))  # outbox rows due now (the job's clock is NOW)
    mine = tuple(await store.read(lambda tx: booked_between(tx, *loaded(TUESDAY).window)))  # type: ignore[misc]
    t.found = loaded(TUESDAY, booked=mine, mine=mine)
    assert run(t, "find_my_bookings").ok and run(t, "move_appointment", date="2026-12-08", time="16:00").ok
    await store.commit(lambda tx: JOB.commit(tx, "CA2", t, NOW))  # outbox rows due now (the job's clock is NOW)
    assert run(t, "cancel_appointment").ok
    await store.commit(lambda tx: JOB.commit(tx, "CA2", t, NOW))  # outbox rows due now (the job's clock is NOW)


async def test_booking_events_reach_the_webhook_signed_in_order_and_the_calendar_rows_wait(tmp_path: Path) -> None:
    """created, moved, cancelled: each POSTed once with a valid signature; calendar rows are not the webhook's."""
    store = await Store.open(tmp_path / "hooks.sqlite3", schemas=SCHEMAS)
    lines: list[str] = []
    try:
        await book_move_cancel(store)
        async with trio.open_nursery() as nursery:
            receiver: Receiver = await nursery.start(lambda task_status: serve_webhook_receiver(
                secret=SECRET, announce=lines.append, task_status=task_status))
            worker = OutboxWorker(store, receiver.url, SECRET, backoff_base_s=0.01, backoff_cap_s=0.05, poll_s=0.5)
            await nursery.start(worker.run)
            with trio.fail_after(10):
                await receiver.wait_for(3)
            nursery.cancel_scope.cancel()
        states = await store.read(lambda tx: tx.execute("SELECT event, target, state FROM outbox ORDER BY id"))
    finally:
        await store.aclose()
    events = [p["event"] for p in receiver.received]
    assert events == ["booking.created", "booking.moved", "booking.cancelled"]
    assert [r.problem for r in receiver.requests] == [None, None, None]  # every signature checked out
    moved = receiver.received[1]
    assert (moved["start"], moved["previous_start"]) == ("2026-12-08T16:00:00-05:00", "2026-12-08T14:00:00-05:00")
    assert lines[0] == "webhook received booking.created #1: haircut at 2026-12-08T14:00:00-05:00 for Sam"
    assert [(s["event"], s["state"]) for s in states if s["target"] == "calendar"] == [
        ("calendar.put", "pending"), ("calendar.put", "pending"), ("calendar.delete", "pending")]


# -- voicebridge bookings ------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "book.sqlite3"

    async def fill() -> None:
        store = await Store.open(path, schemas=SCHEMAS)
        try:
            await book_move_cancel(store)
            t = booking_request("10:00")
            await store.commit(lambda tx: JOB.commit(tx, "CA3", t, NOW))  # outbox rows due now (the job's clock is NOW)
        finally:
            await store.aclose()

    trio.run(fill)
    return path


def cli(db: Path, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    monkeypatch.chdir(db.parent)  # no stray ./.env
    return cli_main(list(argv))


def test_bookings_lists_newest_first_in_the_business_time_zone(
        db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(db, monkeypatch, "bookings") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "When", "Service", "Customer", "Status", "Delivery"]
    assert lines[1].split() == ["2", "Tue", "2026-12-08", "10:00", "haircut", "Sam", "confirmed", "webhook",
                                "pending,", "calendar", "pending"]
    assert lines[2].split()[:7] == ["1", "Tue", "2026-12-08", "16:00", "haircut", "Sam", "cancelled"]


def test_bookings_json_and_show(db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(db, monkeypatch, "bookings", "--json") == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["status"], r["start"]) for r in rows] == [
        (2, "confirmed", "2026-12-08T10:00:00-05:00"), (1, "cancelled", "2026-12-08T16:00:00-05:00")]
    assert rows[0]["delivery"] == {"webhook": "pending", "calendar": "pending"}
    assert cli(db, monkeypatch, "bookings", "show", "1") == 0
    text = capsys.readouterr().out
    assert "Booking #1, cancelled: haircut, Tue 2026-12-08 16:00-16:30 (America/New_York)" in text
    assert f"Customer: Sam, phone {CALLER}" in text and "Price: $25.00" in text
    history = text.split("History:\n")[1].split("Deliveries:")[0].splitlines()
    assert [h.split()[2] for h in history] == ["created", "moved", "cancelled"]
    assert "  calendar.delete   to calendar pending, 0 attempts" in text
    assert cli(db, monkeypatch, "bookings", "show", "1", "--json") == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["sequence"] == 2 and [c["change"] for c in detail["changes"]] == ["created", "moved", "cancelled"]
    assert cli(db, monkeypatch, "bookings", "show", "9") == 1
    assert capsys.readouterr().err.strip() == "voicebridge bookings show: no booking #9"


def test_bookings_upcoming_lists_what_is_still_to_come(
        db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(db, monkeypatch, "bookings", "--upcoming") == 0
    out = capsys.readouterr().out
    # the test's bookings are in December 2026: upcoming until then, and only the confirmed one
    if dt.datetime.now(dt.timezone.utc) < NOW:
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["2"]
    else:
        assert out.strip() == "No upcoming bookings."


def test_bookings_without_a_database_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(tmp_path / "none.sqlite3", monkeypatch, "bookings") == 2
    assert "no database at" in capsys.readouterr().err


def test_demo_chooses_the_job_and_its_default_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from voicebridge.peers.demo import choose
    from voicebridge.peers.scenario import ScenarioError

    config, scenario = choose(Config(), None, "appointments")
    assert (config.job, scenario.name) == ("appointments", "appointments")
    config, scenario = choose(Config(job="appointments"), None, None)
    assert scenario.name == "appointments"
    config, scenario = choose(Config(), "appointment_keypad", None)
    assert (config.job, scenario.name) == ("appointments", "appointment_keypad")
    assert choose(Config(), None, None)[1].name == "demo"
    with pytest.raises(ScenarioError, match="scenario 'demo' is a pizza call, not appointments"):
        choose(Config(), "demo", "appointments")
    menu = tmp_path / "menu.toml"
    menu.write_text(Path("voicebridge/jobs/pizza/default_menu.toml").read_text(), encoding="utf-8")
    config, scenario = choose(Config(menu_path=menu), None, "appointments")
    assert config.business_file is None and scenario.name == "appointments"
    assert f"{menu} is not a business file for appointments; using the packaged example" in capsys.readouterr().err


def test_recordings_carry_the_job_and_the_wall_clock_a_replay_runs_them_at(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The booking fixture says which job and when; its read-back is that day's next Tuesday."""
    import gzip

    from voicebridge.jobs.appointments.words import parse_day, say_day
    from voicebridge.peers.replay import load_recording

    fixture = Path(__file__).resolve().parent / "fixtures" / "appointments.jsonl.gz"
    recording = load_recording(fixture)
    assert recording.settings["job"] == "appointments" and recording.wall_clock is not None
    local_day = recording.wall_clock.astimezone(JOB.business.tz).date()
    tuesday = say_day(parse_day("tuesday", local_day), local_day)
    outputs = [line["msg"]["item"].get("output", "") for line in recording.lines
               if line["dir"] == "out" and (line.get("msg") or {}).get("type") == "conversation.item.create"]
    assert any(f"a haircut on {tuesday} at 2 pm, for Sam" in o for o in outputs)
    lines = gzip.decompress(fixture.read_bytes()).decode().splitlines()
    meta = json.loads(lines[0])
    meta["wall_clock"] = "last Tuesday"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n", encoding="utf-8")
    assert cli_main(["replay", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"voicebridge replay: {bad}:1: wall_clock must be an ISO-8601 time with its UTC offset")
