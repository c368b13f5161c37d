"""The daemon over loopback: Twilio's webhooks and media stream, signatures, tokens, health, drain.

Real sockets and the real clock (the calls here are short scenarios, a few seconds each); every
wait is bounded by `trio.fail_after`, and only 127.0.0.1 is used.
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import httpx
import pytest
import trio
import trio_websocket
from twilio.request_validator import RequestValidator

from decimal import Decimal

from voicebridge.config import Config, Prices
from voicebridge.engine.session import CallResult
from voicebridge.ops.cost import quantize_usd, tokens_cost_usd, usage_tokens
from voicebridge.peers.webhook_receiver import Receiver, serve_webhook_receiver
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.peers.demo import free_port
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.ops.notify import Notifier
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import Scenario, load_scenario
from voicebridge.peers.twilio_caller import new_sid, place_call
from voicebridge.edges.protocol import twilio_media as tw
from voicebridge.ops.store import Store

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voicebridge-test.invalid"
MENU = load_menu(None)


@attrs.define
class Running:
    daemon: Daemon
    peer: RealtimePeer
    config: Config
    base: str
    stop: trio.Event
    store: Store

    def sign(self, path: str, params: dict[str, str]) -> str:
        return RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)


@asynccontextmanager
async def running(tmp_path: Path, scenario: str | Scenario = "dtmf_transfer", notifier: Notifier | None = None,
                  job: PizzaJob | None = None, **overrides: Any) -> AsyncIterator[Running]:
    peer = RealtimePeer(load_scenario(scenario) if isinstance(scenario, str) else scenario)
    async with trio.open_nursery() as nursery:
        realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
        port = free_port()
        config = Config(**{"host": "127.0.0.1", "port": port, "public_url": PUBLIC, "realtime_url": realtime_url,
                           "openai_api_key": "test-key", "twilio_auth_token": TOKEN,
                           "db_path": tmp_path / "vb.sqlite3", "transfer_number": "+15550001111", **overrides})
        store = await Store.open(config.db_path)
        daemon = Daemon(config, job=job or PizzaJob(MENU, config.tax_rate_bp), store=store, notifier=notifier)
        stop = trio.Event()
        await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
        try:
            yield Running(daemon, peer, config, f"http://127.0.0.1:{port}", stop, store)
        finally:
            stop.set()
            with trio.move_on_after(10):
                while daemon.nursery is not None and not daemon.draining:
                    await trio.sleep(0.01)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    await store.aclose()


@pytest.fixture(params=[False, True], ids=["framework", "lean"])
def lean(request: pytest.FixtureRequest) -> bool:
    """Both ways of serving media streams: the front listener (default) and the VOICEBRIDGE_FRAMEWORK_SOCKETS=1 fallback."""
    return bool(request.param)


def form(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": new_sid("AC"), "From": "+15551230001", "To": "+15559870000",
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}


@pytest.mark.parametrize("route", ["/incoming-call", "/stream-ended", "/dial-ended", "/call-status"])
async def test_webhooks_refuse_forged_and_missing_signatures(tmp_path: Path, lean: bool, route: str) -> None:
    """Every webhook: a forged or missing X-Twilio-Signature gets 403; a valid one is served."""
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean) as r, httpx.AsyncClient(base_url=r.base) as http:
            params = form(new_sid("CA"))
            forged = r.sign(route, {**params, "To": "+15550000000"})
            assert (await http.post(route, data=params, headers={"X-Twilio-Signature": forged})).status_code == 403
            assert (await http.post(route, data=params)).status_code == 403
            good = await http.post(route, data=params, headers={"X-Twilio-Signature": r.sign(route, params)})
            assert good.status_code in (200, 204)


async def test_incoming_call_answers_with_a_connect_stream_and_a_token(tmp_path: Path, lean: bool) -> None:
    """The voice webhook returns <Connect action><Stream wss://…> with the call's parameters and a token."""
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean) as r, httpx.AsyncClient(base_url=r.base) as http:
            params = form(new_sid("CA"))
            resp = await http.post("/incoming-call", data=params,
                                   headers={"X-Twilio-Signature": r.sign("/incoming-call", params)})
            body = resp.text
            assert resp.headers["content-type"].startswith("text/xml")
            assert f'<Connect action="{PUBLIC}/stream-ended">' in body
            assert '<Stream url="wss://voicebridge-test.invalid/media-stream">' in body
            assert f'<Parameter name="CallSid" value="{params["CallSid"]}" />' in body
            assert '<Parameter name="token" value="v1.' in body
            assert "<Say" not in body  # the AI speaks first


async def test_websocket_upgrade_refuses_a_forged_signature(tmp_path: Path, lean: bool) -> None:
    """/media-stream refuses the upgrade (403) without a valid signature of the wss URL."""
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean) as r:
            url = r.base.replace("http", "ws") + "/media-stream"
            for headers in ([], [(b"x-twilio-signature", b"bm90IGEgc2lnbmF0dXJl")]):
                with pytest.raises(trio_websocket.ConnectionRejected) as info:
                    async with trio_websocket.open_websocket_url(url, extra_headers=headers):
                        pytest.fail("the upgrade was accepted")
                assert info.value.status_code == 403
            sig = RequestValidator(TOKEN).compute_signature("wss://voicebridge-test.invalid/media-stream", {})
            async with trio_websocket.open_websocket_url(url, extra_headers=[(b"x-twilio-signature", sig.encode())]):
                pass  # accepted


@pytest.mark.parametrize("token", ["", "v1.garbage", "reuse", "other-call"])
async def test_stream_start_with_a_bad_token_is_refused_before_any_realtime_session(
        tmp_path: Path, lean: bool, token: str) -> None:
    """A start whose token is missing, malformed, reused or bound to another call gets 1008; no AI session."""
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean) as r, httpx.AsyncClient(base_url=r.base) as http:  # noqa: F841
            call_sid = new_sid("CA")
            if token in ("reuse", "other-call"):
                bound_to = call_sid if token == "reuse" else new_sid("CA")
                token = r.daemon.tokens.mint(bound_to)
                if bound_to == call_sid:
                    await r.daemon.redeem_token(token, call_sid)  # already used once
            url = r.base.replace("http", "ws") + "/media-stream"
            sig = RequestValidator(TOKEN).compute_signature("wss://voicebridge-test.invalid/media-stream", {})
            async with trio_websocket.open_websocket_url(url, extra_headers=[(b"x-twilio-signature", sig.encode())]) as ws:
                stream_sid = new_sid("MZ")
                await ws.send_message(tw.connected())
                await ws.send_message(tw.start(stream_sid, call_sid, new_sid("AC"), {"token": token} if token else {}))
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1008
            assert r.peer.connections == []
            assert await r.daemon.outcome_of(call_sid) == "refused"


async def test_keypad_0_call_ends_with_a_dial_to_the_shop(tmp_path: Path, lean: bool) -> None:
    """A signed call where the caller presses 0: the stream ends and /stream-ended dials the shop."""
    with trio.fail_after(40):
        async with running(tmp_path, framework_sockets=not lean) as r:
            result = await place_call(r.base, load_scenario("dtmf_transfer"), public_url=PUBLIC, auth_token=TOKEN)
            assert result.outcome == "dial"
            assert "+15550001111" in result.action.body
            assert f'<Dial action="{PUBLIC}/dial-ended" timeout="20">' in result.action.body
            calls = await r.store.list_calls()
            assert [c.outcome for c in calls] == ["transferred"]


async def test_metrics_show_the_live_call_then_its_outcome(tmp_path: Path, lean: bool) -> None:
    """/metrics scraped during a call shows it live; after, it is counted by outcome with its cost."""
    with trio.fail_after(40):
        async with running(tmp_path, framework_sockets=not lean) as r, httpx.AsyncClient(base_url=r.base) as http:
            seen_live: list[str] = []

            async def scrape_until_live() -> None:
                while True:
                    text = (await http.get("/metrics")).text
                    if "voicebridge_live_calls 1.0" in text:
                        seen_live.append(text)
                        return
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(scrape_until_live)
                await place_call(r.base, load_scenario("dtmf_transfer"), public_url=PUBLIC, auth_token=TOKEN)
            assert seen_live
            after = (await http.get("/metrics")).text
            assert "voicebridge_live_calls 0.0" in after
            assert 'voicebridge_calls_total{outcome="transferred"} 1.0' in after
            assert "voicebridge_time_to_first_audio_seconds_count 1.0" in after
            for direction in ("in", "out"):  # sampled frames timed through the bridge
                count = [line for line in after.splitlines()
                         if line.startswith(f'voicebridge_forwarding_latency_seconds_count{{direction="{direction}"}}')]
                assert count and float(count[0].split()[1]) >= 1
            cost = [line for line in after.splitlines() if line.startswith("voicebridge_call_cost_usd_total")]
            assert cost and float(cost[0].split()[1]) > 0


async def test_a_live_call_is_in_the_shared_registry_until_it_ends(tmp_path: Path) -> None:
    """While a call runs, the store's live-call list (what any process's staff page reads) shows it,
    carried by this process, with its flow state; once it ends, the list is empty."""
    with trio.fail_after(40):
        async with running(tmp_path) as r:
            seen: list[Any] = []

            async def watch() -> None:
                while not seen:
                    seen.extend(await r.store.live_calls())
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await place_call(r.base, load_scenario("dtmf_transfer"), public_url=PUBLIC, auth_token=TOKEN)
            [call] = seen
            assert call.instance == r.store.instance_id and call.business == r.daemon.businesses.default.slug
            assert call.state and call.summary == {"direction": "inbound", "job": "pizza"}
            assert [c.outcome for c in await r.store.list_calls()] == ["transferred"]
            for _ in range(200):
                if not await r.store.live_calls():
                    break
                await trio.sleep(0.02)
            assert await r.store.live_calls() == []


async def test_health_and_readiness(tmp_path: Path, lean: bool) -> None:
    """/healthz answers while up; /readyz is 200 while serving and 503 while draining."""
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean) as r, httpx.AsyncClient(base_url=r.base) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            r.daemon.draining = True
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and "draining" in ready.text
            r.daemon.draining = False


async def test_shutdown_drains_then_ends_live_calls_with_their_outcome(tmp_path: Path, lean: bool) -> None:
    """SIGTERM-like shutdown: no new calls, the live call gets the drain time, then ends as 'shutdown'."""
    with trio.fail_after(40):
        async with running(tmp_path, framework_sockets=not lean, scenario="silent_caller", drain_timeout_s=1.0) as r:
            async with trio.open_nursery() as nursery:
                results: list[Any] = []

                async def call() -> None:
                    results.append(await place_call(r.base, load_scenario("silent_caller"),
                                                    public_url=PUBLIC, auth_token=TOKEN))

                nursery.start_soon(call)
                with trio.fail_after(10):
                    while not r.daemon.live:
                        await trio.sleep(0.05)
                r.stop.set()
            calls = await r.store.list_calls()
            assert [c.outcome for c in calls] == ["shutdown"]
            assert results[0].report.ended_by == "bridge"


async def test_systemd_is_told_ready_and_stopping(tmp_path: Path, lean: bool) -> None:
    """With NOTIFY_SOCKET set, the daemon sends READY=1 once serving and STOPPING=1 on shutdown."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    got: list[bytes] = []
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean, notifier=Notifier({"NOTIFY_SOCKET": str(path)})) as r:
            await trio.lowlevel.wait_readable(sock)
            got.append(sock.recv(1024))
            r.stop.set()
            await trio.lowlevel.wait_readable(sock)
            got.append(sock.recv(1024))
    sock.close()
    assert got == [b"READY=1", b"STOPPING=1"]


async def test_unused_prewarmed_session_is_discarded(tmp_path: Path, lean: bool) -> None:
    """A Realtime session pre-warmed for a call whose stream never comes is closed after its TTL."""
    with trio.fail_after(20):
        async with running(tmp_path, framework_sockets=not lean, prewarm_ttl_s=0.5) as r, httpx.AsyncClient(base_url=r.base) as http:
            params = form(new_sid("CA"))
            await http.post("/incoming-call", data=params,
                            headers={"X-Twilio-Signature": r.sign("/incoming-call", params)})
            with trio.fail_after(5):
                while not (r.peer.connections and r.peer.connections[0].closed_at is not None):
                    await trio.sleep(0.05)
            assert r.peer.connections[0].closed_by == "client"


def _task_count(nursery: trio.Nursery) -> int:
    return sum(1 + sum(_task_count(n) for n in t.child_nurseries) for t in nursery.child_tasks)


async def test_calls_leave_no_tasks_or_sockets_behind(tmp_path: Path, lean: bool) -> None:
    """After three calls (one hung up mid-answer), the daemon runs the same tasks as before, sockets closed."""
    with trio.fail_after(60):
        async with running(tmp_path, framework_sockets=not lean, scenario="hangup_mid_answer", prewarm_ttl_s=1.0) as r:
            assert r.daemon.nursery is not None
            await trio.sleep(0.2)
            before = _task_count(r.daemon.nursery)
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(partial(place_call, r.base, load_scenario("hangup_mid_answer"),
                                               public_url=PUBLIC, auth_token=TOKEN))
            await trio.sleep(1.5)  # past the pre-warm TTL: nothing may still be waiting
            assert not r.daemon.live
            assert _task_count(r.daemon.nursery) == before
            assert len(r.peer.connections) == 3
            assert all(c.closed_at is not None for c in r.peer.connections)


# -- numbers that are tested: cost, transcript order, metrics ------------------------------


def _metric(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert lines, f"{name} is not in /metrics"
    return float(lines[0].split()[1])


async def test_a_whole_order_call_stores_its_cost_its_transcript_in_order_and_counts_its_webhook(
        tmp_path: Path) -> None:
    """One real order call through the daemon (one call: they take seconds each):

    - the stored cost is exactly the priced usage of its responses and of the caller's
      transcriptions: dropping either (or pricing it wrong) changes the row;
    - a store slow to take the first transcript line still ends up with the lines in spoken order;
    - the order's webhook, delivered, shows on /metrics as delivered.
    """
    no_twilio = Prices(twilio_per_min_usd=Decimal(0))  # the call's duration varies with the host; tokens do not
    responses: list[dict[str, Any]] = []
    transcriptions: list[dict[str, Any]] = []
    spoken: list[tuple[str, str]] = []
    three_spoken = trio.Event()

    def observe(sid: str, kind: str, fields: dict[str, Any]) -> None:
        if kind == "usage":
            responses.append(fields["usage"])
        elif kind == "transcription_usage":
            transcriptions.append(fields["usage"])
        elif kind == "transcript":
            spoken.append((fields["role"], fields["text"]))
            if len(spoken) == 3:
                three_spoken.set()

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            receiver: Receiver = await nursery.start(
                lambda task_status: serve_webhook_receiver(secret="whsec-test", task_status=task_status))
            async with running(tmp_path, scenario="full_order", prices=no_twilio, order_webhook_url=receiver.url,
                               order_webhook_secret="whsec-test") as r, httpx.AsyncClient(base_url=r.base) as http:
                real_add = r.store.add_transcript
                writes = 0

                async def slow_first(call_sid: str, **kw: Any) -> None:
                    nonlocal writes
                    writes += 1
                    if writes == 1:  # the first write is slow: it waits until three lines were spoken (20 s at most)
                        with trio.move_on_after(20):
                            await three_spoken.wait()
                    await real_add(call_sid, **kw)

                r.store.add_transcript = slow_first  # type: ignore[method-assign]
                r.daemon.observers.append(observe)
                result = await place_call(r.base, load_scenario("full_order"), public_url=PUBLIC, auth_token=TOKEN)
                await receiver.wait_for(1)
                text = ""
                with trio.move_on_after(5):
                    while 'voicebridge_webhook_deliveries_total{state="delivered"} 1.0' not in text:
                        text = (await http.get("/metrics")).text
                        await trio.sleep(0.05)
                with trio.move_on_after(10):
                    while len(await r.store.transcript(result.call_sid)) < len(spoken):
                        await trio.sleep(0.05)
                stored = [(line.role, line.text) for line in await r.store.transcript(result.call_sid)]
                [row] = [c for c in await r.store.list_calls() if c.call_sid == result.call_sid]
            nursery.cancel_scope.cancel()
    # the cost
    assert responses and transcriptions
    tokens: dict[str, int] = {}
    for usage in responses:
        for kind, n in usage_tokens(usage).items():
            tokens[kind] = tokens.get(kind, 0) + n
    realtime = tokens_cost_usd(tokens, no_twilio)
    heard_in = sum(u["input_tokens"] for u in transcriptions)
    heard_out = sum(u["output_tokens"] for u in transcriptions)
    transcription = (heard_in * no_twilio.transcription_in_usd
                     + heard_out * no_twilio.transcription_out_usd) / Decimal(1_000_000)
    assert realtime > 0 and transcription > 0
    assert row.cost_usd == quantize_usd(realtime + transcription)
    assert row.cost_details is not None
    assert row.cost_details["transcriptions"] == len(transcriptions)
    assert row.cost_details["responses"] == len(responses)
    # the transcript
    assert len(spoken) >= 4
    assert stored == spoken
    # the webhook
    assert 'voicebridge_webhook_deliveries_total{state="delivered"} 1.0' in text
    assert 'voicebridge_webhook_deliveries_total{state="dead"} 0.0' in text


async def test_metrics_count_dropped_frames_and_say_what_first_audio_measures(tmp_path: Path) -> None:
    """A finished call's dropped caller frames are added to frames_dropped_total{direction="in"};
    the first-audio histogram's help names what the bridge times (stream start to first audio)."""
    with trio.fail_after(20):
        async with running(tmp_path) as r, httpx.AsyncClient(base_url=r.base) as http:
            await r.daemon._on_ended(CallResult(call_sid="CA" + "0" * 32, stream_sid=None, outcome="caller_hung_up",
                                                counts={"frames_dropped": 3}))
            text = (await http.get("/metrics")).text
    assert 'voicebridge_frames_dropped_total{direction="in"} 3.0' in text
    assert ("# HELP voicebridge_time_to_first_audio_seconds Delay from the start of the call's media stream "
            "until the first agent audio is sent to the caller.") in text
