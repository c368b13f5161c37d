"""Transfers that land and voicemail that reaches someone.

A transfer (keypad 0 or "can I talk to someone") ends the stream; Twilio then rings the shop for
a bounded time and comes back to `/dial-ended`, which hangs up after a conversation or offers
voicemail when nobody answered. The voicemail's `<Record>` calls `/voicemail` and
`/voicemail-status`; the recording lands on the call's row, once, and the business gets one
signed `voicemail.received` delivery. The AI-down fallback is tested for each of its branches.
Real daemon on loopback (as in test_daemon.py), every wait bounded.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import trio
from trio.testing import MockClock

from calls import run_in_memory
from test_daemon import MENU, PUBLIC, TOKEN, Running, form, running
from voicebridge.cli import main
from voicebridge.i18n import load_translators
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.peers.clips import load_clip
from voicebridge.peers.scenario import parse_scenario
from voicebridge.peers.twiml import Dial, Hangup, Record, Say, parse_twiml
from voicebridge.peers.twilio_caller import new_sid, place_call
from voicebridge.peers.webhook_receiver import serve_webhook_receiver
from voicebridge.ops.store import Store

VOICE_TRANSFER = parse_scenario("""
name = "voice_transfer"
description = "After the greeting the caller asks for a real person: the model calls transfer_to_human, says it is connecting them, and the stream ends for Twilio to dial the shop."
max_s = 60

[[caller]]
wait = "heard"
ms = 300
say = "c_person"

[assistant.on_purpose]
greeting = { say = "a_greeting" }
resume = { say = "a_sorry_go_ahead" }
transfer = { say = "a_transfer" }

[assistant.on_caller]
c_person = { call = "transfer_to_human", args = { reason = "the caller asked for a person" } }
""", "voice_transfer.toml")

CALLER = "+15551230001"
RECORDING = "https://api.twilio.com/2010-04-01/Accounts/AC0/Recordings/RE0123456789abcdef0123456789abcdef"


async def post(r: Running, http: httpx.AsyncClient, route: str, params: dict[str, str]) -> httpx.Response:
    return await http.post(route, data=params, headers={"X-Twilio-Signature": r.sign(route, params)})


def verbs(resp: httpx.Response) -> tuple[object, ...]:
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/xml")
    doc = parse_twiml(resp.text)
    assert doc.problems == ()
    return doc.verbs


def is_voicemail_prompt(vs: tuple[object, ...]) -> bool:
    """A spoken invitation, then <Record> posting to our two voicemail routes, then <Hangup/>."""
    if len(vs) < 3 or not isinstance(vs[-2], Record) or not isinstance(vs[-1], Hangup):
        return False
    record = vs[-2]
    return (any(isinstance(v, Say) and "after the tone" in v.text for v in vs)
            and record.action == f"{PUBLIC}/voicemail" and record.max_length_s == 120
            and record.recording_status_callback == f"{PUBLIC}/voicemail-status")


def voicemail_prompt(resp: httpx.Response) -> bool:
    return is_voicemail_prompt(verbs(resp))


def a_dial_to_the_shop(vs: tuple[object, ...], timeout: int = 20) -> Dial:
    dials = [v for v in vs if isinstance(v, Dial)]
    assert len(dials) == 1
    dial = dials[0]
    assert [t.value for t in dial.targets] == ["+15550001111"]
    assert dial.timeout_s == timeout and dial.action == f"{PUBLIC}/dial-ended"
    return dial


async def test_asking_for_a_person_transfers_the_call(autojump_clock: MockClock) -> None:
    """"Can I talk to a real person?": the model's transfer_to_human ends the call as transferred,
    after the caller heard that they are being connected."""
    call = await run_in_memory(VOICE_TRANSFER)
    assert call.result.outcome == "transferred"
    assert load_clip("a_transfer").audio in call.report.played_audio()
    assert [(f["name"], f["ok"]) for k, f in call.events if k == "tool"] == [("transfer_to_human", True)]
    said = [(f["role"], f["text"]) for k, f in call.events if k == "transcript"]
    assert ("caller", "Can I talk to a real person?") in said


async def test_a_voice_transfer_dials_the_shop_with_a_timeout_and_a_way_back(tmp_path: Path) -> None:
    """A whole call over the daemon: after the spoken transfer, /stream-ended rings the shop for
    VOICEBRIDGE_DIAL_TIMEOUT_S seconds and sends the result to /dial-ended."""
    with trio.fail_after(40):
        async with running(tmp_path, VOICE_TRANSFER, dial_timeout_s=25) as r:
            result = await place_call(r.base, VOICE_TRANSFER, public_url=PUBLIC, auth_token=TOKEN)
            assert result.outcome == "dial"
            assert result.action is not None
            a_dial_to_the_shop(parse_twiml(result.action.body).verbs, timeout=25)
            assert [c.outcome for c in await r.store.list_calls()] == ["transferred"]


async def test_dial_ended_hangs_up_after_a_conversation_and_offers_voicemail_otherwise(tmp_path: Path) -> None:
    """DialCallStatus completed: <Hangup/>. no-answer, busy, failed, canceled: voicemail, not silence.
    The callback is signature-checked like every webhook."""
    with trio.fail_after(30):
        async with running(tmp_path) as r, httpx.AsyncClient(base_url=r.base) as http:
            base = {**form(new_sid("CA")), "CallStatus": "in-progress"}
            assert verbs(await post(r, http, "/dial-ended", {**base, "DialCallStatus": "completed",
                                                             "DialCallDuration": "42"})) == (Hangup(),)
            for status in ("no-answer", "busy", "failed", "canceled"):
                resp = await post(r, http, "/dial-ended", {**base, "DialCallStatus": status})
                assert voicemail_prompt(resp), (status, resp.text)
                assert any(isinstance(v, Say) and "nobody at the shop" in v.text for v in verbs(resp))
            forged = await http.post("/dial-ended", data={**base, "DialCallStatus": "busy"},
                                     headers={"X-Twilio-Signature": r.sign("/dial-ended", base)})
            assert forged.status_code == 403


@pytest.mark.parametrize("transfer_number", ["+15550001111", None], ids=["transfer", "no-transfer-number"])
async def test_ai_down_fallback_apologises_then_a_person_or_voicemail(tmp_path: Path,
                                                                      transfer_number: str | None) -> None:
    """A call whose AI side failed (no outcome known): an apology, then the shop (a dial with a timeout
    that comes back to /dial-ended) when TRANSFER_NUMBER is set, else voicemail; and when that dial is
    not answered, voicemail too."""
    with trio.fail_after(30):
        async with running(tmp_path, transfer_number=transfer_number) as r, \
                httpx.AsyncClient(base_url=r.base) as http:
            params = form(new_sid("CA"))
            resp = await post(r, http, "/stream-ended", params)
            vs = verbs(resp)
            assert isinstance(vs[0], Say) and "having trouble" in vs[0].text
            if transfer_number:
                a_dial_to_the_shop(vs)
                assert not any(isinstance(v, Record) for v in vs)
                unanswered = await post(r, http, "/dial-ended", {**params, "DialCallStatus": "no-answer"})
                assert voicemail_prompt(unanswered)
                answered = await post(r, http, "/dial-ended", {**params, "DialCallStatus": "completed"})
                assert verbs(answered) == (Hangup(),)
            else:
                assert voicemail_prompt(resp)
                assert not any(isinstance(v, Dial) for v in vs)


async def test_a_spanish_business_apologises_and_takes_the_message_in_spanish(tmp_path: Path) -> None:
    """Twilio's own voice speaks the business's default language: every fixed line of the AI-down
    fallback and the voicemail comes from the catalog, with <Say language="es">."""
    with trio.fail_after(30):
        spanish = PizzaJob(MENU, translators=load_translators(("es", "en")))  # a Spanish-first menu
        async with running(tmp_path, transfer_number=None, job=spanish) as r, \
                httpx.AsyncClient(base_url=r.base) as http:
            params = form(new_sid("CA"))
            vs = verbs(await post(r, http, "/stream-ended", params))
            spoken = [(v.text, v.language) for v in vs if isinstance(v, Say)]
            assert spoken == [
                ("Lo sentimos, nuestro asistente de pedidos tiene problemas en este momento.", "es"),
                ("Por favor, deje su nombre, su número y su pedido después del tono, y le devolveremos la llamada.",
                 "es")]
            assert isinstance(vs[-2], Record) and isinstance(vs[-1], Hangup)
            bye = verbs(await post(r, http, "/voicemail", params))
            assert bye == (Say("Gracias. Le llamaremos pronto. Adiós.", language="es"), Hangup())
            unanswered = verbs(await post(r, http, "/dial-ended", {**params, "DialCallStatus": "busy"}))
            assert unanswered[0] == Say("Lo sentimos, nadie en la tienda pudo atender su llamada.", language="es")


async def test_a_transfer_without_a_shop_number_offers_voicemail(tmp_path: Path) -> None:
    """A transferred call with no TRANSFER_NUMBER configured is offered voicemail instead of a goodbye."""
    with trio.fail_after(40):
        async with running(tmp_path, VOICE_TRANSFER, transfer_number=None) as r:
            result = await place_call(r.base, VOICE_TRANSFER, public_url=PUBLIC, auth_token=TOKEN)
            assert result.action is not None
            assert [c.outcome for c in await r.store.list_calls()] == ["transferred"]
            assert is_voicemail_prompt(parse_twiml(result.action.body).verbs)
            assert result.outcome == "record"


async def test_voicemail_is_kept_on_the_call_row_and_delivered_once(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The <Record> action and its status callback (each possibly repeated by Twilio) leave one
    voicemail on the call's row and one signed `voicemail.received` delivery; the caller's number
    is not in the logs."""
    caplog.set_level(logging.DEBUG)
    secret = "whsec-test-0123456789abcdef"
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            receiver = await outer.start(lambda task_status: serve_webhook_receiver(secret=secret,
                                                                                   task_status=task_status))
            async with running(tmp_path, transfer_number=None, order_webhook_url=receiver.url,
                               order_webhook_secret=secret) as r, httpx.AsyncClient(base_url=r.base) as http:
                call_sid = new_sid("CA")
                params = form(call_sid)
                assert voicemail_prompt(await post(r, http, "/stream-ended", params))
                recorded = {**params, "CallStatus": "completed", "RecordingUrl": RECORDING,
                            "RecordingDuration": "17", "RecordingSid": "RE" + "0" * 32, "Digits": "hangup"}
                for _ in range(2):  # Twilio retries a callback it thinks failed
                    vs = verbs(await post(r, http, "/voicemail", recorded))
                    assert isinstance(vs[0], Say) and "call you back" in vs[0].text and vs[-1] == Hangup()
                status = {"AccountSid": params["AccountSid"], "CallSid": call_sid, "RecordingSid": "RE" + "0" * 32,
                          "RecordingUrl": RECORDING, "RecordingStatus": "completed", "RecordingDuration": "17",
                          "RecordingChannels": "1", "RecordingSource": "RecordVerb"}
                for _ in range(2):
                    assert (await post(r, http, "/voicemail-status", status)).status_code == 204
                forged = await http.post("/voicemail-status", data={**status, "RecordingUrl": RECORDING + "x"},
                                         headers={"X-Twilio-Signature": r.sign("/voicemail-status", status)})
                assert forged.status_code == 403
                bad = {**status, "RecordingUrl": "not a url"}
                assert (await post(r, http, "/voicemail-status", bad)).status_code == 400
                with trio.fail_after(10):
                    while not receiver.received:
                        await trio.sleep(0.05)
                await trio.sleep(0.5)  # room for a wrong second delivery to show up
                calls = await r.store.list_calls()
                assert [(c.call_sid, c.from_number, c.voicemail_url, c.voicemail_duration_s) for c in calls] == [
                    (call_sid, CALLER, RECORDING, 17)]
            outer.cancel_scope.cancel()
    assert len(receiver.received) == 1
    payload = receiver.received[0]
    assert payload["event"] == "voicemail.received"
    assert (payload["call_sid"], payload["from"], payload["recording_url"], payload["duration_s"]) == (
        call_sid, CALLER, RECORDING, 17)
    assert CALLER not in caplog.text and CALLER[1:] not in caplog.text


def test_calls_and_calls_show_name_the_voicemail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`voicebridge calls` marks a call with a voicemail (its length); `calls show SID` gives its URL."""
    db = tmp_path / "vb.sqlite3"
    call_sid = "CA" + "1" * 32

    async def seed() -> None:
        store = await Store.open(db)
        await store.call_started(call_sid, stream_sid=None, from_number=CALLER, to_number="+15559870000",
                                 direction="inbound", started_at=datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc))
        assert await store.voicemail_received(call_sid, url=RECORDING, duration_s=17, from_number=CALLER)
        assert not await store.voicemail_received(call_sid, url=RECORDING, duration_s=17, from_number=CALLER)
        await store.aclose()

    trio.run(seed)
    monkeypatch.setenv("VOICEBRIDGE_DB", str(db))
    assert main(["calls"]) == 0
    listed = capsys.readouterr().out
    assert "Voicemail" in listed.splitlines()[0] and "17s" in listed.splitlines()[1]
    assert main(["calls", "show", call_sid]) == 0
    assert f"Voicemail (17s): {RECORDING}" in capsys.readouterr().out
    assert main(["calls", "show", call_sid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["voicemail_url"], shown["voicemail_duration_s"]) == (RECORDING, 17)
