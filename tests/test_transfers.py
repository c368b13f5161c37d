"""Transfers that land and the AI-down fallback, over loopback against the real daemon.

`<Dial>` rings the shop for a bounded time and comes back to `/dial-ended`; whatever the shop
did (no answer, busy, failed, canceled) the caller hears a voicemail prompt, never silence. The
fallback TwiML after a failed AI side is checked for both branches (a transfer number or not).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from test_daemon import PUBLIC, TOKEN, Running, form, running
from voicebridge.peers.twiml import Dial, Hangup, Record, Say, parse_twiml
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import new_sid, place_call


async def post(http: httpx.AsyncClient, r: Running, route: str, params: dict[str, str]) -> httpx.Response:
    return await http.post(route, data=params, headers={"X-Twilio-Signature": r.sign(route, params)})


@pytest.mark.parametrize("status", ["no-answer", "busy", "failed", "canceled"])
async def test_an_unanswered_transfer_brings_the_caller_to_voicemail(tmp_path: Path, status: str) -> None:
    """DialCallStatus other than completed: an apology, the voicemail prompt and a <Record>, then hang up."""
    with trio.fail_after(20):
        async with running(tmp_path) as r, httpx.AsyncClient(base_url=r.base) as http:
            params = {**form(new_sid("CA")), "DialCallStatus": status, "DialCallSid": new_sid("CA")}
            resp = await post(http, r, "/dial-ended", params)
            assert resp.status_code == 200
            verbs = parse_twiml(resp.text).verbs
            assert [type(v) for v in verbs] == [Say, Say, Record, Hangup]
            assert "leave your name" in verbs[1].text
            assert verbs[2].action == f"{PUBLIC}/voicemail"


async def test_a_completed_transfer_hangs_up(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as r, httpx.AsyncClient(base_url=r.base) as http:
            params = {**form(new_sid("CA")), "DialCallStatus": "completed", "DialCallDuration": "42"}
            resp = await post(http, r, "/dial-ended", params)
            assert [type(v) for v in parse_twiml(resp.text).verbs] == [Hangup]


async def test_ai_down_with_a_transfer_number_apologises_then_dials_with_a_way_back(tmp_path: Path) -> None:
    """A call the daemon never saw a stream for: apology, 'connecting you', <Dial timeout action>."""
    with trio.fail_after(20):
        async with running(tmp_path) as r, httpx.AsyncClient(base_url=r.base) as http:
            resp = await post(http, r, "/stream-ended", form(new_sid("CA")))
            verbs = parse_twiml(resp.text).verbs
            assert [type(v) for v in verbs] == [Say, Say, Dial]
            assert "trouble" in verbs[0].text
            dial = verbs[2]
            assert [t.value for t in dial.targets] == ["+15550001111"]
            assert dial.action == f"{PUBLIC}/dial-ended"
            assert dial.timeout_s == 20


async def test_ai_down_without_a_transfer_number_takes_a_message(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path, transfer_number=None) as r, httpx.AsyncClient(base_url=r.base) as http:
            resp = await post(http, r, "/stream-ended", form(new_sid("CA")))
            verbs = parse_twiml(resp.text).verbs
            assert [type(v) for v in verbs] == [Say, Say, Record, Hangup]
            assert "trouble" in verbs[0].text and "leave your name" in verbs[1].text
            assert verbs[2].action == f"{PUBLIC}/voicemail"
            # back from the <Record>: thanked and hung up
            back = await post(http, r, "/voicemail", {**form(new_sid("CA")),
                                                      "RecordingUrl": "https://api.twilio.invalid/rec/RE1",
                                                      "RecordingDuration": "7"})
            assert [type(v) for v in parse_twiml(back.text).verbs] == [Say, Hangup]


async def test_a_voice_transfer_through_the_daemon_dials_with_a_timeout_and_a_way_back(tmp_path: Path) -> None:
    """"Can I talk to a real person?": transfer_to_human, the stream ends, /stream-ended answers
    <Dial timeout action=/dial-ended>; the call is stored as transferred."""
    with trio.fail_after(40):
        async with running(tmp_path, scenario="voice_transfer") as r:
            result = await place_call(r.base, load_scenario("voice_transfer"), public_url=PUBLIC, auth_token=TOKEN)
            assert result.outcome == "dial"
            dial = parse_twiml(result.action.body).of_type(Dial)[0]
            assert [t.value for t in dial.targets] == ["+15550001111"]
            assert (dial.action, dial.timeout_s) == (f"{PUBLIC}/dial-ended", 20)
            assert [c.outcome for c in await r.store.list_calls()] == ["transferred"]
