"""The local Realtime server toward a phone bridge: handshake, VAD, ASR, responses, faults, observations."""

from __future__ import annotations

import array
import base64
import json
import math
import random
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Callable

import pytest
import trio
import trio_websocket
from openai.types.realtime import RealtimeServerEvent
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse
from pydantic import TypeAdapter

from openai_strict import extra_keys
from voicebridge.edges.audio import Resampler, pcm16_to_ulaw, ulaw_to_pcm16
from voicebridge.peers.asr import PCM, PCMU, Recognizer, alaw_to_pcm16, envelope
from voicebridge.peers.clips import all_clips, load_clip
from voicebridge.peers.realtime_server import HandshakeRejected, RealtimePeer, serve_realtime_peer, vad_level_dbfs
from voicebridge.peers.scenario import load_scenario, parse_scenario
from voicebridge.edges.protocol.realtime import (
    SessionSettings,
    append_audio,
    item_function_output,
    item_message,
    item_truncate,
    response_cancel,
    response_create,
    session_update,
)
from voicebridge.edges.transport import MemoryStream, StreamClosed, memory_stream_pair

SERVER = TypeAdapter(RealtimeServerEvent)
PATH = "/v1/realtime?model=gpt-realtime"
AUTH = {"Authorization": "Bearer test-key"}
SILENCE = b"\xff"  # µ-law digital silence
TOOL_NAMES = ("add_item", "update_item", "set_customer", "review_order", "confirm_order", "end_call")
TOOLS = tuple({"type": "function", "name": n, "description": f"{n} tool",
               "parameters": {"type": "object", "properties": {}}} for n in TOOL_NAMES)
CALLER_CLIPS = {n: c for n, c in all_clips().items() if c.speaker == "caller"}


# -- validation of everything the peer sends (protocols.md section 8) -------------------------




def validate(event: dict[str, Any]) -> None:
    """A GA server event with no unknown key anywhere (the session's id/object/expires_at excepted)."""
    model = SERVER.validate_python(event)
    allowed: set[str] = set()
    if event["type"] in ("session.created", "session.updated"):
        allowed = {".session.id", ".session.object", ".session.expires_at"}
        assert extra_keys(RealtimeSessionCreateResponse.model_validate(event["session"])) == []
    unknown = [k for k in extra_keys(model, "") if k not in allowed]
    assert unknown == [], f"{event['type']}: unknown keys {unknown}"
    assert model.model_dump(mode="json", exclude_unset=True) == event


# -- the bridge's side of a connection, in memory -----------------------------------------------


class Client:
    """Reads and validates every server event; sends client events and caller audio."""

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream
        self.events: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        await self.stream.send(text)

    async def recv(self) -> dict[str, Any]:
        event = json.loads(await self.stream.receive())
        validate(event)
        self.events.append(event)
        return event

    async def until(self, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda e: True,
                    limit: int = 5000) -> dict[str, Any]:
        for _ in range(limit):
            event = await self.recv()
            if event["type"] == kind and pred(event):
                return event
        raise AssertionError(f"no {kind} within {limit} events")

    async def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Everything that arrives within `seconds` (mock-clock time)."""
        got: list[dict[str, Any]] = []
        with trio.move_on_after(seconds):
            while True:
                got.append(await self.recv())
        return got

    async def speak(self, audio: bytes, *, frame_bytes: int = 160, frame_s: float = 0.02) -> None:
        """Send audio as Twilio does: one frame every 20 ms."""
        for i in range(0, len(audio), frame_bytes):
            await self.send(append_audio(base64.b64encode(audio[i : i + frame_bytes]).decode()))
            await trio.sleep(frame_s)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@asynccontextmanager
async def connect(peer: RealtimePeer, *, path: str = PATH, headers: dict[str, str] | None = None,
                  settings: SessionSettings | None = None) -> AsyncIterator[Client]:
    """A connected, configured session (pass settings=None and headers to stop after session.created)."""
    ours, theirs = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(peer.handle, theirs, path=path, headers=AUTH if headers is None else headers))
        client = Client(ours)
        try:
            await client.until("session.created")
            if settings is not None:
                await client.send(session_update(settings))
                await client.until("session.updated")
            yield client
        finally:
            await ours.aclose()


def settings(**overrides: Any) -> SessionSettings:
    return SessionSettings(instructions="Take pizza orders.", tools=TOOLS, **overrides)


def padded(clip: str, before_ms: int = 500, after_ms: int = 1000) -> bytes:
    return SILENCE * (8 * before_ms) + load_clip(clip).audio + SILENCE * (8 * after_ms)


def to_pcm24k(ulaw: bytes) -> bytes:
    return Resampler(8000, 24000).process(ulaw_to_pcm16(ulaw))


def noise_ulaw(ms: int, dbfs: float, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    sigma = 32768 * 10 ** (dbfs / 20)
    samples = [max(-32768, min(32767, round(rng.gauss(0, sigma)))) for _ in range(8 * ms)]
    return pcm16_to_ulaw(array.array("h", samples).tobytes())


def audio_of(events: list[dict[str, Any]], response_id: str) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events
                    if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id)


def scenario(text: str) -> Any:
    return parse_scenario(text, "test.toml")


def greeting_with_fault(fault: str) -> Any:
    """A scenario whose only reply is the greeting, with one `[[faults]]` entry (TOML lines)."""
    return scenario(f'[[faults]]\n{fault}\n[assistant.on_purpose]\ngreeting = {{ say = "a_greeting" }}\n')


GREETER = scenario("""
[assistant.on_purpose]
greeting = { say = "a_greeting" }
[assistant.on_caller]
c_hello_order = { say = "a_what_order" }
c_large_pepperoni = [{ call = "add_item", args = { item = "pepperoni", size = "large" } }, { say = "a_added_pepperoni" }]
""")


# -- handshake ----------------------------------------------------------------------------------


async def test_session_created_comes_first_with_the_model_and_defaults(autojump_clock: trio.abc.Clock) -> None:
    """On connect the peer sends session.created: id, object, model from the URL, expiry, defaults."""
    peer = RealtimePeer(GREETER, session_max_s=600)
    async with connect(peer, path="/v1/realtime?model=gpt-realtime-2") as client:
        created = client.events[0]
        assert created["type"] == "session.created"
        session = created["session"]
        assert session["model"] == "gpt-realtime-2" and session["object"] == "realtime.session"
        assert session["id"].startswith("sess_") and session["expires_at"] > 0
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await client.send(session_update(settings()))
        updated = await client.until("session.updated")
        assert updated["session"]["id"] == session["id"]
        assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert updated["session"]["tools"] == [dict(t) for t in TOOLS]
        assert "event_id" not in json.dumps(updated["session"])
    assert peer.connections[0].model == "gpt-realtime-2"
    assert "authorization" in peer.connections[0].header_names


async def test_handshake_refuses_bad_path_and_missing_key(autojump_clock: trio.abc.Clock) -> None:
    """A wrong path is a 404 and a missing or empty bearer key a 401, each with a JSON error body."""
    peer = RealtimePeer(GREETER, api_key="right-key")
    with pytest.raises(HandshakeRejected) as wrong_path:
        peer.check_handshake("/v1/realtim?model=x", AUTH)
    assert wrong_path.value.status == 404
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        with pytest.raises(HandshakeRejected) as no_key:
            peer.check_handshake(PATH, headers)
        assert no_key.value.status == 401
        assert json.loads(no_key.value.body)["error"]["type"] == "invalid_request_error"
    with pytest.raises(HandshakeRejected) as bad_key:
        peer.check_handshake(PATH, {"authorization": "Bearer wrong-key"})
    assert json.loads(bad_key.value.body)["error"]["code"] == "invalid_api_key"
    assert b"wrong-key" not in bad_key.value.body
    ours, theirs = memory_stream_pair()
    await peer.handle(theirs, path=PATH, headers={})
    with pytest.raises(StreamClosed) as closed:
        await ours.receive()
    assert (closed.value.code, closed.value.reason) == (1006, "HTTP 401")
    assert [r.status for r in peer.rejections] == [404, 401, 401, 401, 401, 401]
    assert peer.connections == []


async def test_beta_header_gets_beta_api_shape_disabled_and_a_close(autojump_clock: trio.abc.Clock) -> None:
    """An OpenAI-Beta header is accepted, answered with error beta_api_shape_disabled, then closed."""
    peer = RealtimePeer(GREETER)
    ours, theirs = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(peer.handle, theirs, path=PATH, headers={**AUTH, "OpenAI-Beta": "realtime=v1"}))
        first = json.loads(await ours.receive())
        validate(first)
        assert first["type"] == "error" and first["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(StreamClosed):
            await ours.receive()
    assert peer.connections[0].closed_by == "server"


# -- client events ------------------------------------------------------------------------------


async def test_invalid_client_events_get_error_codes_and_the_session_goes_on(autojump_clock: trio.abc.Clock) -> None:
    """Each malformed client event gets the service's error (with its event_id); the session stays usable."""
    peer = RealtimePeer(GREETER)
    bad = [
        ("{not json", "invalid_json", None),
        (json.dumps({"type": "response.audio.delta", "event_id": "c1"}), "invalid_value", "type"),
        (json.dumps({"type": "session.update", "event_id": "c2",
                     "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}),
         "unknown_parameter", "session.input_audio_format"),
        (json.dumps({"type": "session.update", "event_id": "c3", "session": {"modalities": ["audio"]}}),
         "missing_required_parameter", "session.type"),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "c4", "audio": "not base64!"}),
         "invalid_value", "audio"),
        (json.dumps({"type": "response.create", "event_id": "c5", "response": {"temperature": 0.8}}),
         "unknown_parameter", "response.temperature"),
        (json.dumps({"type": "session.update", "event_id": "c6", "session": {"type": "realtime", "audio": {
            "input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}}}),
         "invalid_value", "session.audio.input.turn_detection.threshold"),
        (json.dumps({"type": "conversation.item.create", "event_id": "c7", "item": {
            "type": "function_call_output", "call_id": "call_nope", "output": "{}"}}), "invalid_value", "item.call_id"),
        (json.dumps({"type": "conversation.item.create", "event_id": "c8", "item": {
            "type": "message", "role": "assistant", "content": [{"type": "output_audio", "audio": "//8="}]}}),
         "invalid_value", "item.content[0].type"),
        (json.dumps({"type": "input_audio_buffer.commit", "event_id": "c9"}), "input_audio_buffer_commit_empty", None),
        (json.dumps({"type": "session.update", "event_id": "c10", "session": {"type": "realtime",
                                                                            "model": "gpt-other"}}),
         "invalid_value", "session.model"),
    ]
    async with connect(peer) as client:
        for text, _, _ in bad:
            await client.send(text)
        errors = [await client.until("error") for _ in bad]
        for (text, code, param), error in zip(bad, errors):
            assert error["error"]["type"] == "invalid_request_error"
            assert (error["error"]["code"], error["error"]["param"]) == (code, param), text
        assert [e["error"]["event_id"] for e in errors] == [None] + [f"c{i}" for i in range(1, len(bad))]
        await client.send(session_update(settings()))
        updated = await client.until("session.updated")
        assert updated["session"]["instructions"] == "Take pizza orders."
        await client.send(response_create(metadata={"purpose": "greeting"}))
        done = await client.until("response.done")
        assert done["response"]["status"] == "completed"
    conn = peer.connections[0]
    assert [e.code for e in conn.errors_sent] == [code for _, code, _ in bad]
    assert conn.types_received()[:3] == ["invalid", "response.audio.delta", "session.update"]


async def test_response_create_while_active_and_cancel_without_one_are_errors(
        autojump_clock: trio.abc.Clock) -> None:
    """A second response.create gets conversation_already_has_active_response; a stray cancel is harmless."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        await client.send(response_cancel())
        assert (await client.until("error"))["error"]["code"] == "response_cancel_not_active"
        await client.send(response_create(metadata={"purpose": "greeting"}))
        created = await client.until("response.created")
        await client.send(response_create(metadata={"purpose": "greeting"}))
        error = await client.until("error")
        assert error["error"]["code"] == "conversation_already_has_active_response"
        assert created["response"]["id"] in error["error"]["message"]
        done = await client.until("response.done")
        assert done["response"]["status"] == "completed"
        assert len(audio_of(client.events, created["response"]["id"])) == len(load_clip("a_greeting").audio)


async def test_cancel_stops_audio_at_once_and_reports_client_cancelled(autojump_clock: trio.abc.Clock) -> None:
    """response.cancel mid-answer: no more deltas, response.done cancelled/client_cancelled, items incomplete."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        created = await client.until("response.created")
        rid = created["response"]["id"]
        for _ in range(3):
            await client.until("response.output_audio.delta")
        await client.send(response_cancel(rid))
        done = await client.until("response.done")
        after = await client.drain(5.0)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["response"]["output"][0]["status"] == "incomplete"
        assert not [e for e in after if e.get("response_id") == rid]
        sent_ms = len(audio_of(client.events, rid)) / 8
        assert 300 <= sent_ms < 1000
        assert done["response"]["usage"]["output_token_details"]["audio_tokens"] == round(sent_ms / 50)
    conn = peer.connections[0]
    assert conn.cancels[0].reason == "client_cancelled" and conn.cancels[0].response_id == rid
    assert conn.responses[0].status == "cancelled" and conn.responses[0].audio_ms == sent_ms


async def test_truncate_checks_item_and_length_then_truncates(autojump_clock: trio.abc.Clock) -> None:
    """Unknown item and too-long audio_end_ms are errors; a good truncate is acknowledged and recorded."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        await client.until("response.output_audio.delta")
        await client.send(response_cancel())
        done = await client.until("response.done")
        item_id = done["response"]["output"][0]["id"]
        generated = len(audio_of(client.events, done["response"]["id"])) // 8
        await client.send(item_truncate("item_unknown", 100, event_id="t1"))
        unknown = await client.until("error")
        assert unknown["error"]["code"] == "item_truncate_invalid_item_id"
        assert unknown["error"]["event_id"] == "t1"
        await client.send(item_truncate(item_id, generated + 60))
        too_long = await client.until("error")
        assert too_long["error"]["code"] == "invalid_value"
        assert too_long["error"]["message"] == (
            f"Audio content of {generated}ms is already shorter than {generated + 60}ms")
        await client.send(item_truncate(item_id, generated - 40))
        truncated = await client.until("conversation.item.truncated")
        assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (
            item_id, 0, generated - 40)
    logs = peer.connections[0].truncates
    assert [(t.item_id, t.audio_end_ms, t.ok) for t in logs] == [
        ("item_unknown", 100, False), (item_id, generated + 60, False), (item_id, generated - 40, True)]
    assert logs[2].generated_ms == generated


async def test_client_items_are_added_done_and_recorded_for_a_restored_conversation(
        autojump_clock: trio.abc.Clock) -> None:
    """conversation.item.create gets added then done with an id; the peer keeps what the client restored."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        await client.send(item_message("user", "A large pepperoni, please."))
        await client.send(item_message("assistant", "One large pepperoni, got it.", event_id="x"))
        first = await client.until("conversation.item.done")
        second = await client.until("conversation.item.done")
        assert first["item"]["id"].startswith("item_") and first["item"]["role"] == "user"
        assert second["previous_item_id"] == first["item"]["id"]
        assert [e["type"] for e in client.events[-4:]] == ["conversation.item.added", "conversation.item.done"] * 2
        await client.send(json.dumps({"type": "conversation.item.retrieve", "item_id": first["item"]["id"]}))
        retrieved = await client.until("conversation.item.retrieved")
        assert retrieved["item"]["content"][0]["text"] == "A large pepperoni, please."
        await client.send(json.dumps({"type": "conversation.item.delete", "item_id": second["item"]["id"]}))
        assert (await client.until("conversation.item.deleted"))["item_id"] == second["item"]["id"]
    created = peer.connections[0].items_created
    assert [(i["role"], i["content"][0]["text"]) for i in created] == [
        ("user", "A large pepperoni, please."), ("assistant", "One large pepperoni, got it.")]
    assert peer.connections[0].types_received()[-2:] == ["conversation.item.retrieve", "conversation.item.delete"]


# -- a whole scripted call, every event validated --------------------------------------------


async def test_full_order_session_runs_the_script_and_every_event_is_ga(autojump_clock: trio.abc.Clock) -> None:
    """The full_order scenario end to end: VAD turns, tool chains, read_back transcript, say+call reply."""
    peer = RealtimePeer(load_scenario("full_order"))
    read_back = "One large pepperoni and one medium margherita for Sam, pickup. Total $41.02 with tax."
    outputs = {"add_item": '{"ok":true}', "set_customer": '{"ok":true}', "confirm_order": '{"ok":true}',
               "review_order": json.dumps({"read_back": read_back}), "end_call": '{"ok":true}'}
    spoken: list[tuple[str, str]] = []
    calls: list[tuple[str, dict[str, Any]]] = []

    async def run_response(client: Client) -> dict[str, Any]:
        done = await client.until("response.done")
        for item in done["response"]["output"]:
            if item["type"] == "message":
                spoken.append((item["id"], item["content"][0]["transcript"]))
            else:
                calls.append((item["name"], json.loads(item["arguments"])))
        return done

    async with connect(peer, settings=settings(transcription_model="gpt-4o-mini-transcribe")) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        await run_response(client)
        for clip in ("c_large_pepperoni", "c_medium_margherita", "c_name_pickup", "c_yes"):
            await client.speak(padded(clip, 400, 700))
            done = await run_response(client)
            while done["response"]["output"][-1]["type"] == "function_call" and calls[-1][0] != "end_call":
                call = done["response"]["output"][-1]
                await client.send(item_function_output(call["call_id"], outputs[call["name"]]))
                await client.send(response_create())
                done = await run_response(client)
            await client.speak(SILENCE * 8 * 800)
        transcripts = [e["transcript"] for e in client.of("conversation.item.input_audio_transcription.completed")]
        final = client.of("response.done")[-1]["response"]
        order = [e["type"] for e in client.events if e.get("response_id") == final["id"]
                 and e["type"] in ("response.output_item.added", "response.output_item.done")]
    assert calls == [
        ("add_item", {"item": "pepperoni", "size": "large"}), ("add_item", {"item": "margherita", "size": "medium"}),
        ("set_customer", {"name": "Sam", "fulfillment": "pickup"}), ("review_order", {}),
        ("confirm_order", {}), ("end_call", {}),
    ]
    assert [t for _, t in spoken] == [
        load_clip("a_greeting").text, load_clip("a_added_pepperoni").text, load_clip("a_added_margherita").text,
        read_back, load_clip("a_confirmed").text,
    ]
    assert transcripts == [load_clip(c).text for c in ("c_large_pepperoni", "c_medium_margherita", "c_name_pickup",
                                                      "c_yes")]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert order == ["response.output_item.added", "response.output_item.done"] * 2
    conn = peer.connections[0]
    assert [r.trigger for r in conn.responses] == ["purpose", "caller", "tool_output", "caller", "tool_output",
                                                   "caller", "tool_output", "tool_output", "caller", "tool_output"]
    assert conn.errors_sent == [] and conn.notes == []
    usages = [e["response"]["usage"] for e in client.of("response.done")]
    assert usages[0]["input_token_details"]["cached_tokens"] == 0
    assert usages[-1]["input_token_details"]["cached_tokens"] > 0
    assert usages[-1]["input_token_details"]["audio_tokens"] > usages[1]["input_token_details"]["audio_tokens"]
    assert usages[0]["output_token_details"]["audio_tokens"] == round(load_clip("a_greeting").duration_ms / 50)


async def test_response_streams_in_ga_order_faster_than_real_time(autojump_clock: trio.abc.Clock) -> None:
    """A spoken response: the documented event order, 100 ms deltas, at 4x real time."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        start = trio.current_time()
        await client.send(response_create(metadata={"purpose": "greeting"}))
        done = await client.until("response.done")
        elapsed = trio.current_time() - start
    after_update = client.events[[e["type"] for e in client.events].index("session.updated") + 1 :]
    assert [e["type"] for e in after_update if not e["type"].endswith(".delta")] == [
        "response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
        "response.content_part.added", "response.output_audio.done", "response.output_audio_transcript.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done"]
    item_id = done["response"]["output"][0]["id"]
    assert all(e["item_id"] == item_id and e["response_id"] == done["response"]["id"]
               for e in after_update if e["type"].endswith(".delta"))
    deltas = [base64.b64decode(e["delta"]) for e in client.of("response.output_audio.delta")]
    assert all(len(d) == 800 for d in deltas[:-1]) and 0 < len(deltas[-1]) <= 800
    assert b"".join(deltas) == load_clip("a_greeting").audio
    words = "".join(e["delta"] for e in client.of("response.output_audio_transcript.delta"))
    assert words == load_clip("a_greeting").text
    duration_s = load_clip("a_greeting").duration_ms / 1000
    assert duration_s / 4 - 0.15 <= elapsed <= duration_s / 4 + 0.15
    assert done["response"]["usage"]["output_token_details"]["audio_tokens"] == round(duration_s * 20)


async def test_pcm16_session_gets_pcm16_24khz_deltas_and_hears_pcm16_speech(autojump_clock: trio.abc.Clock) -> None:
    """audio/pcm sessions: 4800-byte deltas of 24 kHz PCM16 that sound like the clip; PCM16 input is heard."""
    peer = RealtimePeer(GREETER, speed=math.inf)
    async with connect(peer, settings=settings(audio_format="pcm16")) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        done = await client.until("response.done")
        pcm = audio_of(client.events, done["response"]["id"])
        deltas = [e for e in client.of("response.output_audio.delta")]
        assert all(len(base64.b64decode(e["delta"])) == 4800 for e in deltas[:-1])
        clip = load_clip("a_greeting").audio
        assert len(pcm) == 6 * len(clip)  # 3x the samples, 2 bytes each
        ours, theirs = envelope(pcm, PCM), envelope(clip, PCMU)  # 20 ms levels, dBFS
        differences = sorted(abs(ours[i] - theirs[i]) for i, level in enumerate(theirs) if level > -40)
        assert differences[len(differences) // 2] < 1.0  # same loudness, window by window
        assert differences[int(0.95 * len(differences))] < 3.0  # fricatives lose a little above 3.25 kHz
        await client.speak(to_pcm24k(padded("c_hello_order", 400, 1000)), frame_bytes=960)
        answer = await client.until("response.done")
    assert answer["response"]["output"][0]["content"][0]["transcript"] == load_clip("a_what_order").text
    conn = peer.connections[0]
    assert conn.transcripts[0][1] == "c_hello_order"
    started = [v for v in conn.vad if v.kind == "speech_started"][0]
    assert abs(started.detected_ms - 400) <= 40


async def test_pcma_session_gets_a_law_deltas(autojump_clock: trio.abc.Clock) -> None:
    """audio/pcma output: 800-byte A-law deltas that decode to the clip's samples (within G.711 steps)."""
    peer = RealtimePeer(GREETER, speed=math.inf)
    async with connect(peer) as client:
        await client.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
            "output": {"format": {"type": "audio/pcma"}}}}}))
        await client.until("session.updated")
        await client.send(response_create(metadata={"purpose": "greeting"}))
        done = await client.until("response.done")
    alaw = audio_of(client.events, done["response"]["id"])
    clip = load_clip("a_greeting").audio
    assert len(alaw) == len(clip) and alaw != clip
    ours, theirs = array.array("h", alaw_to_pcm16(alaw)), array.array("h", ulaw_to_pcm16(clip))
    assert all(abs(a - b) <= max(64, abs(b) // 8) for a, b in zip(ours, theirs))


async def test_text_modality_answers_in_text(autojump_clock: trio.abc.Clock) -> None:
    """output_modalities ["text"] on a response: output_text deltas and an output_text item, no audio."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        await client.send(json.dumps({"type": "response.create", "response": {
            "output_modalities": ["text"], "metadata": {"purpose": "greeting"}}}))
        done = await client.until("response.done")
    text = load_clip("a_greeting").text
    assert "".join(e["delta"] for e in client.of("response.output_text.delta")) == text
    assert client.of("response.output_audio.delta") == []
    assert done["response"]["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert done["response"]["output_modalities"] == ["text"]


async def test_without_turn_detection_a_manual_commit_and_response_answer_the_caller(
        autojump_clock: trio.abc.Clock) -> None:
    """turn_detection null: no VAD events; commit makes the user item, response.create answers what was said."""
    peer = RealtimePeer(GREETER, speed=math.inf)
    async with connect(peer) as client:
        await client.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "format": {"type": "audio/pcmu"}, "turn_detection": None, "transcription": {"model": "whisper-1"}}}}}))
        assert (await client.until("session.updated"))["session"]["audio"]["input"]["turn_detection"] is None
        await client.speak(padded("c_hello_order", 300, 600))
        await client.send(json.dumps({"type": "input_audio_buffer.commit"}))
        committed = await client.until("input_audio_buffer.committed")
        transcript = await client.until("conversation.item.input_audio_transcription.completed")
        await client.send(response_create())
        done = await client.until("response.done")
    assert not client.of("input_audio_buffer.speech_started")
    assert transcript["item_id"] == committed["item_id"] and transcript["transcript"] == load_clip("c_hello_order").text
    assert done["response"]["output"][0]["content"][0]["transcript"] == load_clip("a_what_order").text
    assert peer.connections[0].responses[0].trigger == "caller"


# -- VAD and ASR --------------------------------------------------------------------------------


async def test_vad_fires_on_every_caller_clip_near_its_real_start_and_end(autojump_clock: trio.abc.Clock) -> None:
    """speech_started/stopped bracket each caller clip; audio_start includes padding, audio_end the silence."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings(create_response=False,
                                               transcription_model="gpt-4o-mini-transcribe")) as client:
        offset = 0
        expected: list[tuple[int, int, str]] = []
        for name, clip in CALLER_CLIPS.items():
            expected.append((offset + 500, offset + 500 + clip.duration_ms, name))
            audio = padded(name, 500, 1000)
            await client.speak(audio)
            offset += len(audio) // 8
        await client.drain(1.0)
        transcripts = [e["transcript"] for e in client.of("conversation.item.input_audio_transcription.completed")]
    conn = peer.connections[0]
    starts = [v for v in conn.vad if v.kind == "speech_started"]
    stops = [v for v in conn.vad if v.kind == "speech_stopped"]
    assert len(starts) == len(stops) == len(CALLER_CLIPS)
    for (begin, end, name), started, stopped in zip(expected, starts, stops):
        assert abs(started.detected_ms - begin) <= 40, name
        assert started.audio_ms == started.detected_ms - 300, name
        assert end - 120 <= stopped.detected_ms <= end + 20, name
        assert stopped.audio_ms - stopped.detected_ms in range(500, 521), name
        assert started.item_id == stopped.item_id
    assert transcripts == [c.text for c in CALLER_CLIPS.values()]
    assert [t[1] for t in conn.transcripts] == list(CALLER_CLIPS)
    assert conn.responses == []  # create_response: false
    assert len(client.of("input_audio_buffer.committed")) == len(CALLER_CLIPS)


async def test_vad_stays_quiet_on_silence_and_low_noise(autojump_clock: trio.abc.Clock) -> None:
    """Digital silence and -55 dBFS line noise never start a turn at the default threshold."""
    assert vad_level_dbfs(0.5) == -45.0
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings()) as client:
        await client.speak(SILENCE * 8 * 3000 + noise_ulaw(3000, -55.0))
        await client.drain(1.0)
    assert peer.connections[0].vad == []
    assert not client.of("input_audio_buffer.speech_started")
    assert peer.connections[0].audio_bytes_in == 8 * 6000


def test_asr_recognises_every_caller_clip_in_both_formats_and_cut_short() -> None:
    """Whole clips (µ-law and PCM16 24 kHz, padded with silence) and clips cut short are recognised."""
    asr = Recognizer()
    for name, clip in CALLER_CLIPS.items():
        whole = padded(name, 700, 900)
        exact = asr.recognise(whole, PCMU)
        assert (exact.clip, exact.text, exact.method) == (name, clip.text, "exact")
        resampled = asr.recognise(to_pcm24k(whole), PCM)
        assert (resampled.clip, resampled.method) == (name, "envelope"), name
        cut = SILENCE * 2400 + clip.audio[: len(clip.audio) // 2] + SILENCE * 4000
        short = asr.recognise(cut, PCMU)
        assert short.clip == name and short.heard_fraction < 0.7, name
        assert asr.recognise(to_pcm24k(cut), PCM).clip == name, name


def test_asr_finds_nothing_in_silence_noise_or_assistant_speech() -> None:
    """Audio that is no caller clip gives no clip and an empty transcript."""
    asr = Recognizer()
    assert asr.recognise(SILENCE * 16000, PCMU).clip is None
    assert asr.recognise(noise_ulaw(2000, -30.0), PCMU).text == ""
    for name in ("a_greeting", "a_specials", "a_readback"):
        heard = asr.recognise(load_clip(name).audio, PCMU)
        assert (heard.clip, heard.text) == (None, ""), name


async def test_unrecognised_speech_gets_the_fallback_reply(autojump_clock: trio.abc.Clock) -> None:
    """An utterance that matches no caller clip is transcribed as "" and answered with the fallback."""
    peer = RealtimePeer(GREETER, speed=math.inf)
    async with connect(peer, settings=settings(transcription_model="whisper-1")) as client:
        await client.speak(SILENCE * 3200 + load_clip("a_still_there").audio + SILENCE * 8000)
        transcript = await client.until("conversation.item.input_audio_transcription.completed")
        done = await client.until("response.done")
    assert transcript["transcript"] == ""
    assert done["response"]["output"][0]["content"][0]["transcript"] == load_clip("a_sorry_go_ahead").text
    assert peer.connections[0].responses[0].trigger == "fallback"


async def test_speech_cancels_the_answer_with_interrupt_response_true(autojump_clock: trio.abc.Clock) -> None:
    """interrupt_response: true: speech_started cancels the active response (turn_detected) by itself."""
    peer = RealtimePeer(GREETER)
    async with connect(peer, settings=settings(interrupt_response=True)) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        greeting = (await client.until("response.created"))["response"]["id"]
        await client.until("response.output_audio.delta")
        await client.speak(padded("c_hello_order", 0, 800))
        done = await client.until("response.done", lambda e: e["response"]["id"] == greeting)
        answer = await client.until("response.done")
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    started = client.of("input_audio_buffer.speech_started")[0]
    assert client.events.index(started) < client.events.index(done)
    assert answer["response"]["output"][0]["content"][0]["transcript"] == load_clip("a_what_order").text
    assert peer.connections[0].cancels[0].reason == "turn_detected"


async def test_speech_does_not_cancel_with_interrupt_response_false(autojump_clock: trio.abc.Clock) -> None:
    """interrupt_response: false: the answer goes on (the bridge must cancel); VAD still answers later."""
    peer = RealtimePeer(GREETER, speed=1.0)
    async with connect(peer, settings=settings(interrupt_response=False)) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        greeting = (await client.until("response.created"))["response"]["id"]
        await client.until("response.output_audio.delta")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.speak, padded("c_hello_order", 0, 3500))
            await client.until("input_audio_buffer.speech_started")
            done = await client.until("response.done", lambda e: e["response"]["id"] == greeting)
            nursery.cancel_scope.cancel()
        await client.speak(SILENCE * 8 * 600)
        await client.drain(3.0)
    assert done["response"]["status"] == "completed"
    conn = peer.connections[0]
    assert conn.cancels == []
    assert any("still active" in note for note in conn.notes)  # the utterance ended during the greeting
    assert [r.trigger for r in conn.responses] == ["purpose"]


async def test_idle_timeout_triggers_a_reprompt_after_playback(autojump_clock: trio.abc.Clock) -> None:
    """idle_timeout_ms: after the answer has played and the caller stayed silent, timeout_triggered + a response."""
    text = """
[assistant.on_purpose]
greeting = { say = "a_sorry_go_ahead" }
reprompt = { say = "a_still_there" }
"""
    peer = RealtimePeer(scenario(text))
    async with connect(peer, settings=settings(idle_timeout_ms=6000)) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        await client.until("response.done")
        done_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.speak, SILENCE * 8 * 9000)
            triggered = await client.until("input_audio_buffer.timeout_triggered")
            fired_at = trio.current_time()
            answer = await client.until("response.done")
            nursery.cancel_scope.cancel()
    playback_left = load_clip("a_sorry_go_ahead").duration_ms / 1000 * (1 - 1 / 4)
    assert abs(fired_at - done_at - (playback_left + 6.0)) < 0.1
    assert 5900 <= triggered["audio_end_ms"] - triggered["audio_start_ms"] <= 6000
    assert answer["response"]["output"][0]["content"][0]["transcript"] == load_clip("a_still_there").text
    assert peer.connections[0].responses[1].trigger == "timeout"


# -- faults and limits --------------------------------------------------------------------------


async def test_drop_fault_closes_abruptly_mid_answer_once(autojump_clock: trio.abc.Clock) -> None:
    """drop: after after_audio_ms of audio into the n-th response the socket dies (1006); later ones are fine."""
    peer = RealtimePeer(greeting_with_fault('kind = "drop"\nresponse = 2\nafter_audio_ms = 300'))
    async with connect(peer, settings=settings()) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        assert (await client.until("response.done"))["response"]["status"] == "completed"
        await client.send(response_create(metadata={"purpose": "greeting"}))
        with pytest.raises(StreamClosed) as closed:
            await client.until("response.done")
    assert closed.value.code == 1006
    second = client.of("response.created")[1]["response"]["id"]
    assert len(audio_of(client.events, second)) == 8 * 300
    assert peer.connections[0].faults == ["drop in response 2 after 300 ms of audio"]
    assert peer.connections[0].closed_by == "server" and peer.connections[0].close_code == 1006
    async with connect(peer, settings=settings()) as again:
        for _ in range(2):
            await again.send(response_create(metadata={"purpose": "greeting"}))
            assert (await again.until("response.done"))["response"]["status"] == "completed"


async def test_stall_fault_with_resume_pauses_then_finishes_the_answer(autojump_clock: trio.abc.Clock) -> None:
    """stall + resume_after_ms: nothing is sent for the pause, then the rest of the answer follows."""
    peer = RealtimePeer(greeting_with_fault('kind = "stall"\nafter_audio_ms = 500\nresume_after_ms = 1500'))
    async with connect(peer, settings=settings()) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        rid = (await client.until("response.created"))["response"]["id"]
        deltas: list[tuple[float, int]] = []
        while True:
            e = await client.recv()
            if e["type"] == "response.output_audio.delta":
                deltas.append((trio.current_time(), len(base64.b64decode(e["delta"]))))
            if e["type"] == "response.done":
                break
    assert e["response"]["status"] == "completed"
    assert len(audio_of(client.events, rid)) == len(load_clip("a_greeting").audio)
    gaps = [(b[0] - a[0], sum(n for _, n in deltas[: i + 1])) for i, (a, b) in enumerate(zip(deltas, deltas[1:]))]
    long = [(gap, before) for gap, before in gaps if gap >= 1.5]
    assert len(long) == 1 and long[0][1] == 8 * 500  # one pause, after exactly 500 ms of audio
    assert peer.connections[0].faults == ["stall in response 1 after 500 ms of audio"]


def test_only_a_stall_resumes() -> None:
    with pytest.raises(ValueError, match=r"faults\[0\]\.resume_after_ms.*only a stall resumes"):
        scenario('[[faults]]\nkind = "drop"\nresume_after_ms = 100\n')


async def test_stall_fault_stops_mid_answer_until_cancelled(autojump_clock: trio.abc.Clock) -> None:
    """stall: the response stops sending and never finishes; a cancel still ends it."""
    peer = RealtimePeer(greeting_with_fault('kind = "stall"\nafter_audio_ms = 500'))
    async with connect(peer, settings=settings()) as client:
        await client.send(response_create(metadata={"purpose": "greeting"}))
        rid = (await client.until("response.created"))["response"]["id"]
        quiet = await client.drain(60.0)
        assert not [e for e in quiet if e["type"] == "response.done"]
        assert len(audio_of(client.events, rid)) == 8 * 500
        assert peer.connections[0].responses[0].status == "stalled"
        await client.send(response_cancel())
        done = await client.until("response.done")
    assert done["response"]["status"] == "cancelled"
    assert peer.connections[0].faults == ["stall in response 1 after 500 ms of audio"]


async def test_refuse_fault_rejects_the_next_connections_with_503(autojump_clock: trio.abc.Clock) -> None:
    """refuse: the next `times` connection attempts get HTTP 503; then connections work again."""
    peer = RealtimePeer(greeting_with_fault('kind = "refuse"\ntimes = 2'))
    for _ in range(2):
        ours, theirs = memory_stream_pair()
        await peer.handle(theirs, path=PATH, headers=AUTH)
        with pytest.raises(StreamClosed) as closed:
            await ours.receive()
        assert closed.value.reason == "HTTP 503"
    async with connect(peer, settings=settings()) as client:  # the third attempt is served in full
        await client.send(response_create(metadata={"purpose": "greeting"}))
        assert (await client.until("response.done"))["response"]["status"] == "completed"
    assert [r.status for r in peer.rejections] == [503, 503]
    assert len(peer.connections) == 1


async def test_session_expires_at_the_maximum_length(autojump_clock: trio.abc.Clock) -> None:
    """At session_max_s the peer sends error session_expired and closes the socket."""
    peer = RealtimePeer(GREETER, session_max_s=3600.0)
    async with connect(peer, settings=settings()) as client:
        opened = trio.current_time()
        error = await client.until("error")
        assert trio.current_time() - opened == pytest.approx(3600.0, abs=0.01)
        with pytest.raises(StreamClosed):
            await client.recv()
    assert error["error"] == {"type": "invalid_request_error", "code": "session_expired",
                              "message": "Your session hit the maximum duration of 60 minutes.", "param": None,
                              "event_id": None}
    assert peer.connections[0].closed_by == "server"


# -- observations -------------------------------------------------------------------------------


async def test_observations_record_events_audio_and_responses(autojump_clock: trio.abc.Clock) -> None:
    """The connection log has each client event's time and type, the audio received, and each response."""
    peer = RealtimePeer(GREETER, record_audio=True)
    audio = padded("c_large_pepperoni", 300, 900)
    async with connect(peer, settings=settings()) as client:
        t0 = trio.current_time()
        await client.speak(audio)
        done = await client.until("response.done")
    conn = peer.connections[0]
    appends = [t for t, kind in conn.client_events if kind == "input_audio_buffer.append"]
    assert len(appends) == math.ceil(len(audio) / 160)
    assert appends[0] == pytest.approx(t0) and appends[-1] - appends[0] == pytest.approx(0.02 * (len(appends) - 1))
    assert conn.audio_bytes_in == len(audio) and conn.audio == audio
    assert conn.audio_ms_in == len(audio) / 8
    response = conn.responses[0]
    assert (response.trigger, response.heard, response.status) == ("caller", "c_large_pepperoni", "completed")
    stopped = [v for v in conn.vad if v.kind == "speech_stopped"][0]
    assert response.created_at == stopped.time and response.first_audio_at is None  # a tool call, no audio
    assert response.calls[0].name == "add_item" and json.loads(response.calls[0].arguments) == {
        "item": "pepperoni", "size": "large"}
    assert response.items == [i["id"] for i in done["response"]["output"]]
    assert [v.kind for v in conn.vad] == ["speech_started", "speech_stopped", "committed"]
    assert conn.types_sent()[0] == "session.created" and "response.done" in conn.types_sent()
    assert len(conn.sent_events) == len(client.events)


def test_scenario_clips_are_checked_when_the_peer_is_built() -> None:
    """A scenario that speaks a caller clip, or keys on an assistant clip, is refused up front."""
    with pytest.raises(ValueError, match="not an assistant clip"):
        RealtimePeer(scenario('[assistant.on_purpose]\ngreeting = { say = "c_yes" }'))
    with pytest.raises(ValueError, match="not a caller clip"):
        RealtimePeer(scenario('[assistant.on_caller]\na_greeting = { say = "a_greeting" }'))
    with pytest.raises(KeyError, match="no clip named"):
        RealtimePeer(scenario('[assistant.on_purpose]\ngreeting = { say = "a_nope" }'))
    with pytest.raises(ValueError, match="speed"):
        RealtimePeer(GREETER, speed=0)


async def test_undeclared_tool_is_not_called(autojump_clock: trio.abc.Clock) -> None:
    """A model cannot call a tool the session did not declare: the peer speaks the fallback and notes it."""
    peer = RealtimePeer(GREETER, speed=math.inf)
    async with connect(peer, settings=SessionSettings(instructions="x")) as client:
        await client.speak(padded("c_large_pepperoni", 300, 900))
        done = await client.until("response.done")
    assert [i["type"] for i in done["response"]["output"]] == ["message"]
    assert "add_item" in peer.connections[0].notes[0]


# -- real sockets -------------------------------------------------------------------------------


async def test_loopback_websocket_session_handshakes_and_faults() -> None:
    """Over real loopback sockets: 401 without a key, 503 on refuse, a spoken answer, then a drop (1006)."""
    text = """
[[faults]]
kind = "refuse"
[[faults]]
kind = "drop"
response = 2
after_audio_ms = 200
[assistant.on_purpose]
greeting = { say = "a_what_order" }
"""
    peer = RealtimePeer(scenario(text), speed=math.inf)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_realtime_peer, peer))
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with trio_websocket.open_websocket_url(url + "?model=gpt-realtime", extra_headers=[
                        ("Authorization", "Bearer k")]):
                    pytest.fail("the upgrade was accepted")
            assert refused.value.status_code == 503
            with pytest.raises(trio_websocket.ConnectionRejected) as unauthorised:
                async with trio_websocket.open_websocket_url(url + "?model=gpt-realtime"):
                    pytest.fail("the upgrade was accepted")
            assert unauthorised.value.status_code == 401
            assert json.loads(unauthorised.value.body)["error"]["type"] == "invalid_request_error"
            async with trio_websocket.open_websocket_url(url + "?model=gpt-realtime", extra_headers=[
                    ("Authorization", "Bearer k")]) as ws:
                created = json.loads(await ws.get_message())
                validate(created)
                assert created["type"] == "session.created"
                await ws.send_message(session_update(settings()))
                audio = b""
                await ws.send_message(response_create(metadata={"purpose": "greeting"}))
                with pytest.raises(trio_websocket.ConnectionClosed) as dropped:
                    for _ in range(1000):
                        event = json.loads(await ws.get_message())
                        validate(event)
                        assert event["type"] != "error", event
                        if event["type"] == "response.output_audio.delta":
                            audio += base64.b64decode(event["delta"])
                        if event["type"] == "response.done":
                            await ws.send_message(response_create(metadata={"purpose": "greeting"}))
                assert dropped.value.reason.code == 1006
            assert len(audio) == len(load_clip("a_what_order").audio) + 8 * 200
            nursery.cancel_scope.cancel()
    assert [r.status for r in peer.rejections] == [503, 401]
    assert peer.connections[0].faults == ["drop in response 2 after 200 ms of audio"]
