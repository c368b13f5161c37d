"""Callers in their language: the business's languages on the wire, the bridge's own sentences translated."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import re
import tomllib
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from openai_strict import assert_strict, validate_client
from voicebridge.business import SCHEMAS, BusinessError, build_job
from voicebridge.config import Config, ConfigError
from voicebridge.daemon import Daemon, make_call_setup, serve_daemon
from voicebridge.edges.protocol import realtime as rt
from voicebridge.i18n import ENGLISH, LanguageError, load_translators, parse_languages
from voicebridge.jobs.appointments.words import say_when
from voicebridge.jobs.pizza.day import Availability, DayBox
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import MenuError, load_menu
from voicebridge.jobs.pizza.records import get_order
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import place_call

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "voicebridge"
SPANISH_MENU = PACKAGE / "jobs" / "pizza" / "example_menu_es.toml"
PUBLIC = "https://bridge.example.com"
TOKEN = "test-auth-token"
NBSP = "\xa0"  # Babel puts a no-break space between the amount and "US$" in Spanish


def spanish_job(**changes: Any) -> PizzaJob:
    menu = load_menu(SPANISH_MENU)
    return PizzaJob(menu=menu, translators=load_translators(menu.languages), **changes)


def session_update_for(job: Any) -> dict[str, Any]:
    """The session.update the daemon sends for `job`, validated strictly against the openai models."""
    setup = make_call_setup(Config(), job, connector=None)  # type: ignore[arg-type]
    text = rt.session_update(setup.session)
    assert_strict(validate_client(text))
    return dict(json.loads(text)["session"])


# -- a whole Spanish call through the daemon ------------------------------------------------


async def test_a_spanish_call_through_the_daemon_hears_a_spanish_read_back_and_saves_the_order(tmp_path: Path) -> None:
    """The `spanish_order` scenario on loopback: the transcription detects the language (none set on
    the wire), the model says the caller speaks Spanish, the read-back the caller hears is Spanish with
    the dollars as Spanish says them, and the order is committed after the caller's sí."""
    scenario = load_scenario("spanish_order")
    assert scenario.business_path() == SPANISH_MENU
    peer = RealtimePeer(scenario, speed=4.0)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
            port = free_port()
            config = Config(host="127.0.0.1", port=port, public_url=PUBLIC, realtime_url=realtime_url,
                            openai_api_key="test-key", twilio_auth_token=TOKEN, db_path=tmp_path / "vb.sqlite3",
                            business_path=scenario.business_path())
            store = await Store.open(config.db_path, schemas=SCHEMAS)
            try:
                daemon = Daemon(config, job=build_job(config), store=store)
                stop = trio.Event()
                await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
                result = await place_call(f"http://127.0.0.1:{port}", scenario, public_url=PUBLIC, auth_token=TOKEN)
                assert result.errors == [] and result.outcome == "hangup"

                session = peer.connections[0].session_updates[0]
                transcription = session["audio"]["input"]["transcription"]
                assert transcription == {"model": "gpt-4o-mini-transcribe"}  # no language: it detects
                assert "one of Spanish, English" in session["instructions"]
                language_tool = next(t for t in session["tools"] if t["name"] == "set_language")
                assert language_tool["parameters"]["properties"]["language"]["enum"] == ["es", "en"]

                lines = [(t.role, t.text) for t in await store.transcript(result.call_sid)]
                assert ("caller", "Quiero una pizza grande de pepperoni.") in lines
                read_back = next(text for role, text in lines if role == "assistant" and "Su pedido" in text)
                assert read_back == (
                    f"Su pedido: 1 pizza de pepperoni grande, 17,00{NBSP}US$. Para recoger, a nombre de Ana. "
                    f"Subtotal 17,00{NBSP}US$, impuestos 1,36{NBSP}US$, total 18,36{NBSP}US$. ¿Es correcto? "
                    "Diga sí, o pulse 1 para confirmar.")

                order = await store.read(lambda tx: get_order(tx, 1))
                assert order is not None and order.call_sid == result.call_sid
                assert (order.customer, order.total_cents, order.status) == ("Ana", 1836, "confirmed")
                stop.set()
            finally:
                await store.aclose()
            nursery.cancel_scope.cancel()


# -- the session on the wire ------------------------------------------------------------------


def test_an_english_business_is_unchanged_on_the_wire() -> None:
    """No `languages` anywhere: transcription in English, no language tool, no language line."""
    session = session_update_for(build_job(Config()))
    assert session["audio"]["input"]["transcription"]["language"] == "en"
    assert all(t["name"] != "set_language" for t in session["tools"])
    assert "Language" not in session["instructions"]


def test_a_business_with_one_language_sets_the_transcription_to_it(tmp_path: Path) -> None:
    menu = tmp_path / "menu.toml"
    menu.write_text(SPANISH_MENU.read_text(encoding="utf-8").replace('languages = ["es", "en"]', 'languages = ["es"]'),
                    encoding="utf-8")
    session = session_update_for(build_job(Config(business_path=menu)))
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "es"}
    assert "Language: speak Spanish with the caller." in session["instructions"]
    assert all(t["name"] != "set_language" for t in session["tools"])


def test_voicebridge_languages_is_the_default_for_a_file_without_the_key() -> None:
    config = Config.from_env({"VOICEBRIDGE_LANGUAGES": "es, en"})
    assert config.languages == ("es", "en")
    session = session_update_for(build_job(config))
    assert "language" not in session["audio"]["input"]["transcription"]
    assert [t for t in session["tools"] if t["name"] == "set_language"]


@pytest.mark.parametrize(("value", "why"), [
    ("fr", "no words for 'fr'"), ("xx-nope", "'xx_NOPE' is not a language code"), ("es,es", "listed twice"),
])
def test_a_bad_voicebridge_languages_is_a_clear_setting_error(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"VOICEBRIDGE_LANGUAGES": value})
    assert "VOICEBRIDGE_LANGUAGES" in str(info.value) and why in str(info.value)


def test_a_menu_with_bad_languages_names_the_file_and_the_key(tmp_path: Path) -> None:
    menu = tmp_path / "menu.toml"
    text = SPANISH_MENU.read_text(encoding="utf-8")
    menu.write_text(text.replace('languages = ["es", "en"]', 'languages = "spanish please"'), encoding="utf-8")
    with pytest.raises(MenuError, match=r"menu.toml: languages: 'spanish please' is not a language code"):
        load_menu(menu)
    menu.write_text(text.replace('languages = ["es", "en"]', 'languages = ["de"]'), encoding="utf-8")
    with pytest.raises(BusinessError, match=r"menu.toml: languages: the bridge has no words for 'de'"):
        build_job(Config(business_path=menu))


# -- the call's language ----------------------------------------------------------------------


def test_set_language_switches_the_tool_texts_and_refuses_a_language_not_configured() -> None:
    job = spanish_job()
    now = dt.datetime(2026, 12, 11, 18, 0, tzinfo=dt.timezone.utc)
    order = job.new_task("+15551230001")
    refused = job.run_tool(order, "set_language", json.dumps({"language": "fr"}), now)
    assert not refused.ok and "one of es, en" in refused.output["error"]
    assert order.language is None  # still the default: Spanish, the first configured
    first = job.run_tool(order, "add_item", json.dumps({"item": "pepperoni"}), now)
    assert first.output["error"] == "¿De qué tamaño quiere pizza de pepperoni: pequena, mediana o grande?"
    switched = job.run_tool(order, "set_language", json.dumps({"language": "en"}), now)
    assert switched.ok and order.language == "en"
    again = job.run_tool(order, "add_item", json.dumps({"item": "pepperoni"}), now)
    assert again.output["error"] == "What size would you like the pizza de pepperoni: pequena, mediana or grande?"
    added = job.run_tool(order, "add_item", json.dumps({"item": "pepperoni", "size": "grande"}), now)
    assert added.output["message"] == "Added item 1: one grande pizza de pepperoni, $17.00."


def test_an_english_only_business_has_no_set_language_tool_to_call() -> None:
    job = build_job(Config())
    order = job.new_task(None)
    result = job.run_tool(order, "set_language", json.dumps({"language": "es"}), dt.datetime.now(dt.timezone.utc))
    assert not result.ok and result.output["error"] == "There is no tool named 'set_language'."


def test_sold_out_and_closed_lines_come_in_the_call_language() -> None:
    box = DayBox(Availability(sold_out_items=frozenset({"margarita"})))
    job = spanish_job(day=box)
    now = dt.datetime(2026, 12, 11, 18, 0, tzinfo=dt.timezone.utc)
    order = job.new_task(None)
    sold_out = job.run_tool(order, "add_item", json.dumps({"item": "margarita", "size": "grande"}), now)
    assert sold_out.output["error"] == "Lo siento, hoy ya no queda pizza margarita; ofrezca al cliente otra cosa."
    assert order.lines == []
    box.current = Availability(closed=True, closed_message="Volvemos a abrir a las 17:00.")
    closed = job.run_tool(order, "add_item", json.dumps({"item": "pepperoni", "size": "grande"}), now)
    assert closed.output["error"] == ("La tienda está cerrada ahora y no puede tomar pedidos. "
                                      "Volvemos a abrir a las 17:00.")


def test_the_english_read_back_is_word_for_word_what_it_was() -> None:
    """English callers hear exactly the sentence they always did (the recorded fixtures depend on it)."""
    job = build_job(Config())
    assert isinstance(job, PizzaJob)
    now = dt.datetime(2026, 12, 11, 18, 0, tzinfo=dt.timezone.utc)
    order = job.new_task("+15551230001")
    for args in ({"item": "pepperoni", "size": "large", "quantity": 2, "toppings": ["mushrooms"]},
                 {"item": "garlic knots"}):
        assert job.run_tool(order, "add_item", json.dumps(args), now).ok
    job.run_tool(order, "set_customer", json.dumps({"name": "Sam", "fulfillment": "delivery",
                                                      "address": "12 Elm St"}), now)
    review = job.run_tool(order, "review_order", "{}", now)
    assert review.output["read_back"] == (
        "You ordered: two large pepperoni pizzas with mushrooms, $36.00; one order of garlic knots, $5.50. "
        "For delivery to 12 Elm St, name Sam. Subtotal $41.50, tax $3.32, total $44.82. Is that correct? "
        "Say yes, or press 1 to confirm.")


# -- formats and catalogs ---------------------------------------------------------------------


def test_money_dates_and_times_are_formatted_by_babel_for_the_language() -> None:
    es = load_translators(("es",)).default
    assert es.money(123456) == f"1234,56{NBSP}US$" or es.money(123456) == f"1.234,56{NBSP}US$"
    assert ENGLISH.default.money(123456) == "$1,234.56"
    when = dt.datetime(2026, 12, 11, 14, 30)
    assert say_when(when, dt.date(2026, 12, 1), es) == "viernes, 11 de diciembre a las 14:30"
    assert say_when(when, dt.date(2025, 12, 1), es) == "viernes, 11 de diciembre de 2026 a las 14:30"
    assert say_when(when, dt.date(2026, 12, 1)) == "Friday the 11th of December at 2:30 pm"


def test_every_sentence_the_code_translates_has_a_spanish_translation_with_the_same_fields() -> None:
    """A new tr("...") in a job without its Spanish msgstr fails here (it would be said in English)."""
    said = {str(message) for _, _, message, *_ in extract_from_dir(
        str(PACKAGE), method_map=[("jobs/**.py", "python"), ("i18n.py", "python")],
        keywords={"tr": None})}
    assert len(said) > 40
    po = PACKAGE / "locale" / "es" / "LC_MESSAGES" / "voicebridge.po"
    with po.open("rb") as f:
        catalog = read_po(f)
    translated = {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}
    assert sorted(said - set(translated)) == []
    fields = re.compile(r"{(\w+)}")
    for msgid, msgstr in translated.items():
        assert sorted(fields.findall(str(msgid))) == sorted(fields.findall(str(msgstr))), msgid


def test_the_catalogs_are_package_data_so_a_wheel_carries_them() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["voicebridge"]
    assert any(fnmatch.fnmatch("locale/es/LC_MESSAGES/voicebridge.po", p) for p in patterns)
    assert any(fnmatch.fnmatch("jobs/pizza/example_menu_es.toml", p) for p in patterns)
    assert (resources.files("voicebridge") / "locale" / "es" / "LC_MESSAGES" / "voicebridge.po").is_file()


def test_parse_languages_accepts_region_codes_and_refuses_empty_lists() -> None:
    assert parse_languages(["es-mx", "en"], "languages") == ("es_MX", "en")
    mexico = load_translators(("es_MX",))
    assert rt.transcription_language(mexico.languages) == "es"
    assert mexico.default("For pickup") == "Para recoger"  # the Spanish catalog serves the region
    with pytest.raises(LanguageError, match="non-empty list"):
        parse_languages([], "languages")


def test_an_appointment_read_back_in_spanish_says_the_day_and_time_as_spanish_does() -> None:
    """The salon with languages es and en: after set_language es, the booking read-back is Spanish."""
    from appointments_helpers import BUSINESS, CALLER, NOW, loaded

    from voicebridge.jobs.appointments.job import AppointmentsJob

    job = AppointmentsJob(attrs.evolve(BUSINESS, languages=("es", "en")), translators=load_translators(("es", "en")))
    session = session_update_for(job)
    assert "language" not in session["audio"]["input"]["transcription"]
    task = job.new_task(CALLER)
    task.found = loaded(dt.date(2026, 12, 8))
    assert job.run_tool(task, "set_language", json.dumps({"language": "es"}), NOW).ok
    result = job.run_tool(task, "book_appointment", json.dumps(
        {"service": "haircut", "date": "tuesday", "time": "2 pm", "name": "Sam"}), NOW)
    assert result.ok and result.intent == "review"
    read_back = result.output["read_back"]
    assert read_back.startswith("Esto es lo que tengo: ") and "el martes, 8 de diciembre a las 14:00, a nombre de Sam." in read_back
    assert read_back.endswith("¿Lo reservo?") and f"{NBSP}US$" in read_back
