"""The pizza shop keeps its menu's opening hours: the menu's [hours] timezone/closures/when_closed,
and a job that, outside them, says when it opens again and takes no order."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import trio

from voicebridge.business import SCHEMAS
from voicebridge.config import Config
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.engine.session import job_prompts
from voicebridge.engine.job import CommitError
from voicebridge.i18n import load_translators
from voicebridge.jobs.pizza.day import Availability
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import MenuError, load_menu, parse_menu
from voicebridge.jobs.pizza.order import Order, OrderLine
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import place_call

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voicebridge-test.invalid"

NY = ZoneInfo("America/New_York")
DEFAULT_HOURS = """[hours]
monday = "11:00-22:00"
tuesday = "11:00-22:00"
wednesday = "11:00-22:00"
thursday = "11:00-22:00"
friday = "11:00-23:00"
saturday = "11:00-23:00"
sunday = "12:00-21:00"
"""
KEPT_HOURS = """[hours]
timezone = "America/New_York"
closures = ["2026-12-25", "2026-12-31..2027-01-01"]
when_closed = "message"
monday = "11:00-22:00"
tuesday = "11:00-22:00"
wednesday = "11:00-22:00"
thursday = "11:00-22:00"
friday = "11:00-14:00, 17:00-01:30"
saturday = "17:00-01:30"
sunday = "closed"
"""


def menu_text(hours: str = KEPT_HOURS) -> str:
    path = Path(__file__).parents[1] / "voicebridge" / "jobs" / "pizza" / "default_menu.toml"
    text = path.read_text(encoding="utf-8")
    assert DEFAULT_HOURS in text
    return text.replace(DEFAULT_HOURS, hours)


def bad(hours: str) -> str:
    with pytest.raises(MenuError) as info:
        parse_menu(menu_text(hours), "menu.toml")
    return str(info.value)


def job() -> PizzaJob:
    return PizzaJob(parse_menu(menu_text(), "menu.toml"))


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(timezone.utc)  # type: ignore[misc]


def test_the_menu_reads_its_time_zone_closures_and_what_the_caller_is_offered() -> None:
    """timezone, closures (dates and ranges) and when_closed; the hours' words for the model stay as they were."""
    menu = parse_menu(menu_text(), "menu.toml")
    assert menu.opening is not None and menu.opening.time_zone == "America/New_York"
    assert [str(a) + ".." + str(b) for a, b in menu.opening.closures] == [
        "2026-12-25..2026-12-25", "2026-12-31..2027-01-01"]
    assert menu.when_closed == "message"
    assert "Friday 11am to 2pm and 5pm to 1:30am; Saturday 5pm to 1:30am; Sunday closed." in menu.summary_text()
    # the packaged menu gives no time zone: its hours stay words only, exactly as before
    default = load_menu(None)
    assert default.opening is None
    assert "Monday 11am to 10pm;" in default.summary_text()


def test_bad_hours_settings_name_the_file_and_key() -> None:
    """An unknown zone, closures without a zone, a bad date or offer: each error names the file and key."""
    assert bad(KEPT_HOURS.replace("America/New_York", "Mars/Olympus")) == (
        'menu.toml: hours.timezone: unknown time zone "Mars/Olympus" (use an IANA name like "America/New_York")')
    assert bad(KEPT_HOURS.replace('timezone = "America/New_York"\n', "")).startswith(
        "menu.toml: hours.closures: needs hours.timezone")
    assert bad(KEPT_HOURS.replace('"2026-12-25"', '"Christmas"')).startswith(
        'menu.toml: hours.closures[0]: "Christmas" is not a date')
    assert bad(KEPT_HOURS.replace('when_closed = "message"', 'when_closed = "pigeon"')) == (
        "menu.toml: hours.when_closed: expected one of 'message', 'call_back', 'order_ahead', got 'pigeon'")
    assert bad(KEPT_HOURS.replace('closures = [', 'closures = "2026-12-25"\n#')).startswith(
        "menu.toml: hours.closures: expected a list of dates")
    assert bad(KEPT_HOURS.replace("sunday", "sundae")).startswith("menu.toml: hours.sundae: unknown key")


def test_outside_the_hours_the_job_says_when_it_opens_and_takes_no_order() -> None:
    """Friday 15:00 in New York (between lunch and evening): refused, with "today at 5 pm" in its words."""
    pizza, order = job(), Order.empty()
    closed = at(2026, 12, 4, 15, 0)
    out = pizza.run_tool(order, "add_item", json.dumps({"item": "margherita", "size": "large"}), closed)
    assert out.output == {"ok": False, "error": "The shop is closed right now and cannot take orders. "
                                                "We open again today at 5 pm."}
    assert order.lines == []
    assert not pizza.run_tool(order, "confirm_order", "{}", closed).ok
    assert pizza.run_tool(order, "get_menu", "{}", closed).ok  # the caller may still ask what there is
    assert "We open again today at 5 pm." in pizza.instructions(closed)
    greeting = pizza.prompts_at(closed).greeting
    assert greeting.startswith("Greet the caller and tell them: The shop is closed right now and cannot take "
                               "orders. We open again today at 5 pm.")
    assert "leave a message" in greeting
    # half past midnight on Saturday: still Friday's evening, so open
    late = at(2026, 12, 5, 0, 30)
    assert pizza.run_tool(order, "add_item", json.dumps({"item": "margherita", "size": "large"}), late).ok
    assert pizza.prompts_at(late).greeting.startswith("Greet the caller: thank them for calling")
    assert "closed right now" not in pizza.instructions(late)
    # Christmas is a Friday: closed all day; the next opening is Saturday evening
    christmas = at(2026, 12, 25, 12, 0)
    assert "We open again tomorrow at 5 pm." in pizza.instructions(christmas)
    # New Year's Eve and Day closed (a range): from Wednesday night the next opening is Saturday
    assert "We open again Saturday at 5 pm." in pizza.instructions(at(2026, 12, 30, 23, 0))


def test_a_call_back_shop_asks_the_caller_to_call_again_and_offers_no_transfer() -> None:
    pizza = PizzaJob(parse_menu(menu_text(KEPT_HOURS.replace('"message"', '"call_back"')), "menu.toml"))
    closed = at(2026, 12, 4, 15, 0)
    greeting = pizza.prompts_at(closed).greeting
    assert "We open again today at 5 pm." in greeting and "ask them to call back then" in greeting
    assert "transfer_to_human" not in greeting and "leave a message" not in greeting
    out = pizza.run_tool(Order.empty(), "add_item", json.dumps({"item": "margherita", "size": "large"}), closed)
    assert not out.ok


def test_staff_closed_now_wins_over_open_hours() -> None:
    """Inside the hours, staff's "closed now" still refuses, with staff's own words."""
    pizza, order = job(), Order.empty()
    pizza.day.current = Availability(closed=True, closed_message="Back tomorrow.")
    out = pizza.run_tool(order, "add_item", json.dumps({"item": "margherita", "size": "large"}),
                         at(2026, 12, 3, 12, 0))
    assert out.output["error"] == "The shop is closed right now and cannot take orders. Back tomorrow."


async def test_a_commit_outside_the_hours_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Keypad 1 commits without confirm_order: the commit itself refuses after closing; no order row, no webhook."""
    store = await Store.open(tmp_path / "vb.sqlite3", schemas=SCHEMAS)
    try:
        pizza = job()
        order = Order.empty(caller_number="+15550100111")
        order.lines.append(OrderLine("pepperoni", "large", 1))
        order.customer_name, order.fulfillment = "Sam", "pickup"
        with pytest.raises(CommitError, match="We open again tomorrow at 11 am"):
            await store.commit(lambda tx: pizza.commit(tx, "CA1", order, at(2026, 12, 6, 12, 0)))
        counts = await store.read(lambda tx: tx.execute(
            "SELECT (SELECT COUNT(*) FROM orders) AS orders, (SELECT COUNT(*) FROM outbox) AS outbox"))
        assert counts == [{"orders": 0, "outbox": 0}]
        done = await store.commit(lambda tx: pizza.commit(tx, "CA1", order, at(2026, 12, 7, 12, 0)))
        assert done.id == 1
    finally:
        await store.aclose()


async def test_a_whole_call_on_the_daemon_while_closed_hears_the_next_opening_and_commits_nothing(
        tmp_path: Path) -> None:
    """The daemon over loopback with its clock on a closed Sunday: the caller is still answered, the model is
    told the shop is closed and opens "tomorrow at 11 am" (session and greeting), every attempt to order is
    refused with those words, and no order row or webhook is written, though the caller said yes."""
    menu = parse_menu(menu_text(), "menu.toml")
    sunday = at(2026, 12, 6, 12, 0)
    peer = RealtimePeer(load_scenario("full_order"))
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
            port = free_port()
            config = Config(host="127.0.0.1", port=port, public_url=PUBLIC, realtime_url=realtime_url,
                            openai_api_key="test-key", twilio_auth_token=TOKEN, db_path=tmp_path / "vb.sqlite3")
            store = await Store.open(config.db_path, schemas=SCHEMAS)
            try:
                daemon = Daemon(config, job=PizzaJob(menu, config.tax_rate_bp), store=store,
                                wall_clock=lambda: sunday)
                assert job_prompts(daemon.setup).greeting.startswith(
                    "Greet the caller and tell them: The shop is closed right now and cannot take orders. "
                    "We open again tomorrow at 11 am.")
                stop = trio.Event()
                await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
                result = await place_call(f"http://127.0.0.1:{port}", load_scenario("full_order"),
                                          public_url=PUBLIC, auth_token=TOKEN)
                stop.set()
                counts = await store.read(lambda tx: tx.execute(
                    "SELECT (SELECT COUNT(*) FROM orders) AS orders, (SELECT COUNT(*) FROM order_items) AS items,"
                    " (SELECT COUNT(*) FROM outbox) AS outbox"))
            finally:
                nursery.cancel_scope.cancel()
                await store.aclose()
    assert result.call_sid
    assert counts == [{"orders": 0, "items": 0, "outbox": 0}]
    [conn] = peer.connections
    closed = "The shop is closed right now and cannot take orders. We open again tomorrow at 11 am."
    assert closed in conn.session_updates[0]["instructions"]
    outputs = {json.loads(i["output"]).get("error") for i in conn.items_created if i["type"] == "function_call_output"}
    assert closed in outputs  # add_item and confirm_order said it back to the model
    tools = [c.name for r in conn.responses for c in r.calls]
    assert tools.count("add_item") == 2 and "confirm_order" in tools


def run(pizza: PizzaJob, order: Order, tool: str, now: datetime, **args: object) -> dict[str, object]:
    return pizza.run_tool(order, tool, json.dumps(args), now).output


def ready(order: Order) -> Order:
    order.lines.append(OrderLine("pepperoni", "large", 1))
    order.customer_name, order.fulfillment = "Sam", "pickup"
    return order


def test_a_pickup_time_is_offered_only_by_a_menu_that_keeps_hours() -> None:
    """set_pickup_time is a tool only with hours.timezone: the packaged menu's tools are as before."""
    assert "set_pickup_time" in [t["name"] for t in job().tool_definitions()]
    assert "set_pickup_time" not in [t["name"] for t in PizzaJob(load_menu(None)).tool_definitions()]


def test_a_pickup_time_inside_the_hours_is_read_back_and_outside_them_refused() -> None:
    """Thursday noon: 18:30 is "today at 6:30 pm" in the read-back; 23:00 and Sunday noon are refused."""
    pizza, order = job(), ready(Order.empty())
    thursday = at(2026, 12, 3, 12, 0)
    assert run(pizza, order, "set_pickup_time", thursday, time="23:00") == {
        "ok": False, "error": "We are not open today at 11 pm. The next opening after that is tomorrow at 11 am. "
                              "Ask the caller for a time when we are open."}
    assert run(pizza, order, "set_pickup_time", thursday, time="12:00", date="2026-12-06")["ok"] is False
    assert run(pizza, order, "set_pickup_time", thursday, time="11:00", date="2026-12-31")["error"] == (
        "We take orders up to 7 days ahead. Ask the caller for a sooner time.")
    assert run(pizza, order, "set_pickup_time", thursday, time="half past six")["error"] == (
        "'half past six' is not a time like '18:30' (24-hour clock) or 'asap'.")
    assert run(pizza, order, "set_pickup_time", thursday, time="18:30", date="someday")["error"] == (
        "'someday' is not a date like 2026-12-05.")
    assert str(run(pizza, order, "set_pickup_time", thursday, when="18:30")["error"]).startswith(
        "set_pickup_time takes a JSON object with time")
    assert order.wanted_at is None
    assert run(pizza, order, "set_pickup_time", thursday, time="18:30") == {"ok": True, "time": "today at 6:30 pm"}
    assert "For pickup today at 6:30 pm, name Sam." in str(run(pizza, order, "review_order", thursday)["read_back"])
    assert run(pizza, order, "set_pickup_time", thursday, time="asap") == {"ok": True, "time": "asap"}
    assert "For pickup, name Sam." in str(run(pizza, order, "review_order", thursday)["read_back"])
    # 01:00 after midnight is the next day's, inside Friday evening's hours that run to 01:30
    friday_night = at(2026, 12, 4, 23, 0)
    assert run(pizza, order, "set_pickup_time", friday_night, time="01:00") == {"ok": True,
                                                                                 "time": "tomorrow at 1 am"}


async def test_confirm_order_refuses_a_pickup_time_outside_the_hours_and_nothing_is_stored(tmp_path: Path) -> None:
    """A pickup time that has passed by the yes, or is outside the hours, is refused by confirm_order and
    by the commit (keypad 1): no order row, no webhook. A time inside them is stored and sent."""
    store = await Store.open(tmp_path / "vb.sqlite3", schemas=SCHEMAS)
    try:
        pizza, order = job(), ready(Order.empty(caller_number="+15550100111"))
        assert run(pizza, order, "set_pickup_time", at(2026, 12, 3, 21, 30), time="21:45")["ok"] is True
        late = at(2026, 12, 3, 21, 50)
        assert run(pizza, order, "confirm_order", late)["error"] == (
            "Today at 9:45 pm has already passed. Ask the caller for a later time.")
        order.wanted_at, order.wanted_words = at(2026, 12, 3, 23, 0), "today at 11 pm"
        assert str(run(pizza, order, "confirm_order", late)["error"]).startswith("We are not open today at 11 pm.")
        with pytest.raises(CommitError, match="We are not open today at 11 pm"):
            await store.commit(lambda tx: pizza.commit(tx, "CA1", order, late))
        counts = await store.read(lambda tx: tx.execute(
            "SELECT (SELECT COUNT(*) FROM orders) AS orders, (SELECT COUNT(*) FROM outbox) AS outbox"))
        assert counts == [{"orders": 0, "outbox": 0}]
        assert run(pizza, order, "set_pickup_time", late, time="11:30")["time"] == "tomorrow at 11:30 am"
        assert run(pizza, order, "confirm_order", late)["ok"] is True
        await store.commit(lambda tx: pizza.commit(tx, "CA1", order, late))
        rows = await store.read(lambda tx: tx.execute("SELECT payload FROM orders"))
        assert json.loads(rows[0]["payload"])["wanted_at"] == "2026-12-04T16:30:00Z"
    finally:
        await store.aclose()


def test_a_shop_that_takes_orders_ahead_builds_the_order_while_closed_for_a_time_after_it_opens() -> None:
    """when_closed = "order_ahead": on a closed Sunday the order is built; the yes needs a time inside the hours."""
    menu = parse_menu(menu_text(KEPT_HOURS.replace('"message"', '"order_ahead"')), "menu.toml")
    pizza, order = PizzaJob(menu), Order.empty()
    sunday = at(2026, 12, 6, 12, 0)
    assert pizza.prompts_at(sunday).greeting.startswith(
        "Greet the caller and tell them: The shop is closed right now. We open again tomorrow at 11 am. Tell the "
        "caller so, kindly, with when the shop opens again, and offer to take their order now")
    assert run(pizza, order, "add_item", sunday, item="pepperoni", size="large")["ok"] is True
    run(pizza, order, "set_customer", sunday, name="Sam", fulfillment="pickup")
    assert run(pizza, order, "confirm_order", sunday)["error"] == (
        "The shop is closed right now, so the order needs a time after we open again tomorrow at 11 am. Ask the "
        "caller when they want it and call set_pickup_time.")
    assert run(pizza, order, "set_pickup_time", sunday, time="10:30")["ok"] is False  # before the opening
    assert run(pizza, order, "set_pickup_time", sunday, time="12:00") == {"ok": True, "time": "tomorrow at noon"}
    assert run(pizza, order, "confirm_order", sunday)["ok"] is True
    assert pizza.state_for_model(order)["wanted"] == "tomorrow at noon"
    payload = order.to_json(menu, 800, call_sid="CA1", created_at=sunday)
    assert payload["wanted_at"] == "2026-12-07T17:00:00Z"
    assert "wanted_at" not in Order.empty().to_json(menu, 800, call_sid=None, created_at=sunday)


def test_a_spanish_caller_hears_the_hours_refusals_and_times_in_spanish() -> None:
    """The refusals the model repeats, and the times in them, come in the call's language (Babel's clock)."""
    pizza = PizzaJob(parse_menu(menu_text(), "menu.toml"), translators=load_translators(("en", "es")))
    order = pizza.new_task(None)
    order.language = "es"
    sunday = at(2026, 12, 6, 15, 0)  # closed all Sunday; Monday opens at 11
    refused = run(pizza, order, "add_item", sunday, item="pepperoni", size="large")
    assert refused["error"] == "La tienda está cerrada ahora y no puede tomar pedidos. Abrimos de nuevo mañana a las 11:00."
    monday = at(2026, 12, 7, 12, 0)
    outside = run(pizza, order, "set_pickup_time", monday, time="23:30")
    assert outside["error"] == ("No abrimos hoy a las 23:30. Después abrimos mañana a las 11:00. "
                                "Pida al cliente una hora en que estemos abiertos.")
    inside = run(pizza, order, "set_pickup_time", monday, time="18:30")
    assert inside == {"ok": True, "time": "hoy a las 18:30"} and order.wanted_words == "hoy a las 18:30"
    english = pizza.new_task(None)
    assert run(pizza, english, "set_pickup_time", monday, time="18:30") == {"ok": True, "time": "today at 6:30 pm"}
