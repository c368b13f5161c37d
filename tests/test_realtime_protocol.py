"""OpenAI Realtime (GA), sans I/O: server events in, and client events parsed as strictly as the service."""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

import pytest
from openai_strict import validate_server

from voicebridge.edges.protocol import realtime as rt
from voicebridge.edges.protocol.errors import ProtocolError
from voicebridge.edges.protocol.realtime import (
    MAX_SERVER_FRAME_CHARS,
    AppendAudio,
    AudioDelta,
    AudioDone,
    ClearBuffer,
    ClientEventError,
    CommitBuffer,
    FunctionCall,
    InputTranscript,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ItemTruncated,
    OtherServerEvent,
    OutputItemAdded,
    OutputItemDone,
    RealtimeError,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionSettings,
    SessionUpdate,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TimeoutTriggered,
    TranscriptDelta,
    TranscriptDone,
    parse_client,
    parse_server,
)

RESP, ITEM, USER_ITEM, CALL_ID = "resp_CkXq1", "item_CkXq2", "item_CkXp9", "call_Zx81"
AUDIO = bytes(range(256)) * 2  # 512 µ-law bytes = 64 ms
AUDIO_B64 = base64.b64encode(AUDIO).decode()
MARKER = "CALLERAUDIOzzzz"  # looks like base64 audio; must never appear in an error message
USAGE = {"total_tokens": 821, "input_tokens": 789, "output_tokens": 32,
         "input_token_details": {"text_tokens": 313, "audio_tokens": 476, "image_tokens": 0, "cached_tokens": 640,
                                 "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384,
                                                           "image_tokens": 0}},
         "output_token_details": {"text_tokens": 9, "audio_tokens": 23}}
SESSION = {"type": "realtime", "object": "realtime.session", "id": "sess_Ck01", "model": "gpt-realtime",
           "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
           "max_output_tokens": "inf", "expires_at": 1767225600,
           "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": None, "noise_reduction": None,
                               "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                                  "silence_duration_ms": 200, "idle_timeout_ms": None,
                                                  "create_response": True, "interrupt_response": True}},
                     "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0}}}
ASSISTANT_ITEM = {"id": ITEM, "type": "message", "object": "realtime.item", "status": "in_progress",
                  "role": "assistant", "content": []}
CALL_ITEM = {"id": ITEM, "type": "function_call", "object": "realtime.item", "status": "completed",
             "name": "add_item", "call_id": CALL_ID, "arguments": '{"item":"margherita","quantity":1}'}

# Realistic GA server events (protocols.md section 6) and what parse_server must make of them.
SERVER_CASES: list[tuple[dict[str, Any], Any]] = [
    ({"type": "session.created", "event_id": "event_01", "session": SESSION}, SessionCreated("sess_Ck01")),
    ({"type": "session.updated", "event_id": "event_02", "session": SESSION}, SessionUpdated()),
    ({"type": "input_audio_buffer.speech_started", "event_id": "event_03", "audio_start_ms": 1220,
      "item_id": USER_ITEM}, SpeechStarted(USER_ITEM, 1220)),
    ({"type": "input_audio_buffer.speech_stopped", "event_id": "event_04", "audio_end_ms": 2980,
      "item_id": USER_ITEM}, SpeechStopped(USER_ITEM, 2980)),
    ({"type": "input_audio_buffer.timeout_triggered", "event_id": "event_05", "audio_start_ms": 9000,
      "audio_end_ms": 17000, "item_id": USER_ITEM}, TimeoutTriggered(USER_ITEM, 9000, 17000)),
    ({"type": "response.created", "event_id": "event_06",
      "response": {"id": RESP, "object": "realtime.response", "status": "in_progress", "status_details": None,
                   "output": [], "conversation_id": "conv_1", "output_modalities": ["audio"],
                   "max_output_tokens": "inf", "audio": {"output": {"format": {"type": "audio/pcmu"},
                                                                    "voice": "marin"}},
                   "usage": None, "metadata": None}}, ResponseCreated(RESP)),
    ({"type": "response.output_item.added", "event_id": "event_07", "response_id": RESP, "output_index": 0,
      "item": ASSISTANT_ITEM}, OutputItemAdded(RESP, ITEM, "message")),
    ({"type": "response.output_audio.delta", "event_id": "event_08", "response_id": RESP, "item_id": ITEM,
      "output_index": 0, "content_index": 0, "delta": AUDIO_B64}, AudioDelta(RESP, ITEM, AUDIO_B64, 512)),
    ({"type": "response.output_audio.done", "event_id": "event_09", "response_id": RESP, "item_id": ITEM,
      "output_index": 0, "content_index": 0}, AudioDone(RESP, ITEM)),
    ({"type": "response.output_audio_transcript.delta", "event_id": "event_10", "response_id": RESP,
      "item_id": ITEM, "output_index": 0, "content_index": 0, "delta": "Hi, thanks for "},
     TranscriptDelta(RESP, ITEM, "Hi, thanks for ")),
    ({"type": "response.output_audio_transcript.done", "event_id": "event_11", "response_id": RESP,
      "item_id": ITEM, "output_index": 0, "content_index": 0, "transcript": "Hi, thanks for calling!"},
     TranscriptDone(RESP, ITEM, "Hi, thanks for calling!")),
    ({"type": "conversation.item.input_audio_transcription.completed", "event_id": "event_12",
      "item_id": USER_ITEM, "content_index": 0, "transcript": "One large margherita, please.",
      "usage": {"type": "tokens", "input_tokens": 40, "output_tokens": 8, "total_tokens": 48}},
     InputTranscript(USER_ITEM, "One large margherita, please.",
                     {"type": "tokens", "input_tokens": 40, "output_tokens": 8, "total_tokens": 48})),
    ({"type": "response.function_call_arguments.done", "event_id": "event_13", "response_id": RESP,
      "item_id": ITEM, "output_index": 0, "call_id": CALL_ID, "name": "add_item",
      "arguments": '{"item":"margherita","quantity":1}'},
     FunctionCall(RESP, ITEM, CALL_ID, "add_item", '{"item":"margherita","quantity":1}')),
    ({"type": "response.output_item.done", "event_id": "event_14", "response_id": RESP, "output_index": 0,
      "item": CALL_ITEM}, OutputItemDone(RESP, ITEM, "function_call", "completed")),
    ({"type": "response.done", "event_id": "event_15",
      "response": {"id": RESP, "object": "realtime.response", "status": "cancelled",
                   "status_details": {"type": "cancelled", "reason": "turn_detected"}, "output": [],
                   "usage": USAGE}}, ResponseDone(RESP, "cancelled", "turn_detected", USAGE)),
    ({"type": "response.done", "event_id": "event_16",
      "response": {"id": RESP, "object": "realtime.response", "status": "completed", "status_details": None,
                   "output": []}}, ResponseDone(RESP, "completed", None, None)),
    ({"type": "conversation.item.truncated", "event_id": "event_17", "item_id": ITEM, "content_index": 0,
      "audio_end_ms": 1520}, ItemTruncated(ITEM, 1520)),
    ({"type": "error", "event_id": "event_18",
      "error": {"type": "invalid_request_error", "code": "response_cancel_not_active",
                "message": "Cancellation failed: no active response found", "param": None, "event_id": "evt_c1"}},
     RealtimeError("invalid_request_error", "response_cancel_not_active",
                   "Cancellation failed: no active response found", None, "evt_c1")),
    ({"type": "error", "event_id": "event_19", "error": {"type": "server_error", "message": "boom"}},
     RealtimeError("server_error", None, "boom", None, None)),
    # Events the bridge does not act on come back as OtherServerEvent(type).
    ({"type": "rate_limits.updated", "event_id": "event_20",
      "rate_limits": [{"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06}]},
     OtherServerEvent("rate_limits.updated")),
    ({"type": "input_audio_buffer.committed", "event_id": "event_21", "item_id": USER_ITEM,
      "previous_item_id": None}, OtherServerEvent("input_audio_buffer.committed")),
    ({"type": "conversation.item.added", "event_id": "event_22", "previous_item_id": None,
      "item": {"id": USER_ITEM, "type": "message", "object": "realtime.item", "status": "completed", "role": "user",
               "content": [{"type": "input_audio", "transcript": None}]}},
     OtherServerEvent("conversation.item.added")),
    ({"type": "response.content_part.added", "event_id": "event_23", "response_id": RESP, "item_id": ITEM,
      "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": ""}},
     OtherServerEvent("response.content_part.added")),
    ({"type": "response.function_call_arguments.delta", "event_id": "event_24", "response_id": RESP,
      "item_id": ITEM, "output_index": 0, "call_id": CALL_ID, "delta": '{"item"'},
     OtherServerEvent("response.function_call_arguments.delta")),
]
# Real-service extras the openai models do not declare (session.id, object, expires_at).
NOT_STRICT = {"session.created", "session.updated"}


@pytest.mark.parametrize(("event", "expected"), SERVER_CASES,
                         ids=[f"{i}-{e['type']}" for i, (e, _) in enumerate(SERVER_CASES)])
def test_server_event_parses_to_its_typed_event(event: dict[str, Any], expected: Any) -> None:
    """Each GA server event (a valid openai model itself) parses to the typed event with its values."""
    text = json.dumps(event)
    validate_server(text, strict=event["type"] not in NOT_STRICT)  # the fixture is realistic
    assert parse_server(text) == expected


def test_every_handled_server_type_has_a_case() -> None:
    """Each event type parse_server turns into a typed event is covered above, also as the module grows."""
    handled = {kind for kind in rt._SERVER_PARSERS}
    covered = {event["type"] for event, expected in SERVER_CASES if not isinstance(expected, OtherServerEvent)}
    assert handled - covered == set(), f"server types without a parse case: {sorted(handled - covered)}"


def test_audio_delta_counts_the_decoded_bytes() -> None:
    """An audio delta reports how many µ-law bytes it carries, without decoding on the hot path."""
    for n in (0, 1, 2, 3, 160, 4800):
        event = {"type": "response.output_audio.delta", "event_id": "e", "response_id": RESP, "item_id": ITEM,
                 "output_index": 0, "content_index": 0, "delta": base64.b64encode(b"\x7f" * n).decode()}
        parsed = parse_server(json.dumps(event))
        assert isinstance(parsed, AudioDelta) and parsed.n_bytes == n


@pytest.mark.parametrize("kind", ["response.audio.delta", "conversation.created", "output_audio_buffer.started",
                                  "response.some_future_event", "x"])
def test_unknown_or_unused_server_type_is_other_not_an_error(kind: str) -> None:
    """Beta, unused and future event types come back as OtherServerEvent(type)."""
    assert parse_server(json.dumps({"type": kind, "event_id": "e", "whatever": [1, {}]})) == OtherServerEvent(kind)


def test_server_frames_as_bytes_parse_like_text() -> None:
    """A binary frame with the same JSON parses the same."""
    event, expected = SERVER_CASES[7]
    assert parse_server(json.dumps(event).encode()) == expected


def _case(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(e for e, _ in SERVER_CASES if e["type"] == kind))


def _with(kind: str, path: str, value: Any = ..., ) -> str:
    """A server case as JSON with one field (dotted path) replaced, or dropped when no value is given."""
    event = _case(kind)
    *parents, last = path.split(".")
    target = event
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return json.dumps(event)


BAD_SERVER: list[tuple[str, str, str]] = [
    ("not-json", '{"type":"response.output_audio.delta","delta":"' + MARKER, "not JSON"),
    ("json-list", json.dumps([MARKER]), "expected a JSON object, got list"),
    ("no-type", json.dumps({"event_id": "e", "delta": MARKER}), "event has no string 'type' field"),
    ("type-number", json.dumps({"type": 3}), "event has no string 'type' field"),
    ("created-missing-response-id", _with("response.created", "response.id"),
     "response.created: missing field 'response.id'"),
    ("done-missing-response-id", _with("response.done", "response.id"), "response.done: missing field 'response.id'"),
    ("done-missing-status", _with("response.done", "response.status"), "missing field 'response.status'"),
    ("done-response-string", _with("response.done", "response", MARKER), "field 'response' must be an object, got str"),
    ("done-reason-number", _with("response.done", "response.status_details.reason", 4),
     "field 'response.status_details.reason' must be a string, got int"),
    ("delta-not-base64", _with("response.output_audio.delta", "delta", MARKER + "!"), "delta: not valid base64"),
    ("delta-bad-padding", _with("response.output_audio.delta", "delta", "AAAAA"), "delta: not valid base64"),
    ("delta-number", _with("response.output_audio.delta", "delta", 5), "field 'delta' must be a string, got int"),
    ("delta-missing-item", _with("response.output_audio.delta", "item_id"), "missing field 'item_id'"),
    ("delta-missing-response-id", _with("response.output_audio.delta", "response_id"), "missing field 'response_id'"),
    ("speech-start-ms-string", _with("input_audio_buffer.speech_started", "audio_start_ms", "1220"),
     "field 'audio_start_ms' must be an integer, got str"),
    ("speech-start-ms-bool", _with("input_audio_buffer.speech_started", "audio_start_ms", True),
     "field 'audio_start_ms' must be an integer, got bool"),
    ("speech-stop-missing-item", _with("input_audio_buffer.speech_stopped", "item_id"), "missing field 'item_id'"),
    ("timeout-missing-end", _with("input_audio_buffer.timeout_triggered", "audio_end_ms"),
     "missing field 'audio_end_ms'"),
    ("item-added-item-list", _with("response.output_item.added", "item", [MARKER]),
     "field 'item' must be an object, got list"),
    ("item-done-status-number", _with("response.output_item.done", "item.status", 1),
     "field 'item.status' must be a string, got int"),
    ("function-args-object", _with("response.function_call_arguments.done", "arguments", {"item": MARKER}),
     "field 'arguments' must be a string, got dict"),
    ("function-missing-call-id", _with("response.function_call_arguments.done", "call_id"),
     "missing field 'call_id'"),
    ("transcript-missing", _with("conversation.item.input_audio_transcription.completed", "transcript"),
     "missing field 'transcript'"),
    ("truncated-ms-float", _with("conversation.item.truncated", "audio_end_ms", 1520.5), "must be an integer"),
    ("error-missing-type", _with("error", "error.type"), "error: missing field 'error.type'"),
    ("error-string", _with("error", "error", MARKER), "field 'error' must be an object, got str"),
    ("session-created-no-session", _with("session.created", "session"), "missing field 'session'"),
    ("session-updated-session-list", _with("session.updated", "session", []), "field 'session' must be an object"),
    ("oversize", json.dumps(SERVER_CASES[7][0]) + " " * MAX_SERVER_FRAME_CHARS,
     f"exceeds the {MAX_SERVER_FRAME_CHARS} limit"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in BAD_SERVER], ids=[i for i, _, _ in BAD_SERVER])
def test_malformed_server_event_raises_protocol_error(text: str, expected: str) -> None:
    """Each malformed server event raises ProtocolError from `realtime` naming the problem, not the content."""
    with pytest.raises(ProtocolError) as info:
        parse_server(text)
    message = str(info.value)
    assert info.value.source == "realtime" and message.startswith("realtime: ")
    assert expected in message
    assert MARKER not in message and MARKER[:8] not in message and len(message) < 200


def test_a_server_frame_of_exactly_the_limit_parses() -> None:
    """A frame of MAX_SERVER_FRAME_CHARS characters is accepted (the limit is inclusive)."""
    text = json.dumps(SERVER_CASES[7][0])
    text += " " * (MAX_SERVER_FRAME_CHARS - len(text))
    assert isinstance(parse_server(text), AudioDelta)


# -- parse_client: everything the builders make is accepted --------------------------------------

SETTINGS = SessionSettings("You take pizza orders.", tools=({"type": "function", "name": "end_call",
                                                             "description": "Hang up",
                                                             "parameters": {"type": "object", "properties": {}}},),
                           idle_timeout_ms=8000)


@pytest.mark.parametrize("settings", [
    SETTINGS,
    SessionSettings("", audio_format="pcm16", transcription_model=None, noise_reduction=None),
    SessionSettings("x", language=None, interrupt_response=True, create_response=False),
])
def test_parse_client_accepts_session_update_from_the_builder(settings: SessionSettings) -> None:
    """`session_update` output parses to SessionUpdate carrying the same session object."""
    text = rt.session_update(settings, event_id="evt_1")
    assert parse_client(text) == SessionUpdate(json.loads(text)["session"], "evt_1")


def test_parse_client_accepts_every_other_builder() -> None:
    """Each builder's text parses to the typed client event with the values given."""
    assert parse_client(rt.append_audio(AUDIO_B64)) == AppendAudio(AUDIO_B64, 512, None)
    assert parse_client(rt.response_create()) == ResponseCreate({}, None)
    assert parse_client(rt.response_create(instructions="Greet.", metadata={"purpose": "greeting"},
                                           tool_choice="auto", event_id="evt_2")) == ResponseCreate(
        {"instructions": "Greet.", "metadata": {"purpose": "greeting"}, "tool_choice": "auto"}, "evt_2")
    assert parse_client(rt.response_cancel()) == ResponseCancel(None, None)
    assert parse_client(rt.response_cancel(RESP, event_id="evt_3")) == ResponseCancel(RESP, "evt_3")
    assert parse_client(rt.item_truncate(ITEM, 1520)) == ItemTruncate(ITEM, 0, 1520, None)
    assert parse_client(rt.item_truncate(ITEM, 0, event_id="evt_4")) == ItemTruncate(ITEM, 0, 0, "evt_4")
    for role, kind in (("user", "input_text"), ("system", "input_text"), ("assistant", "output_text")):
        assert parse_client(rt.item_message(role, "Caller pressed 1", previous_item_id="root")) == ItemCreate(
            {"type": "message", "role": role, "content": [{"type": kind, "text": "Caller pressed 1"}]}, "root")
    assert parse_client(rt.item_function_output(CALL_ID, '{"ok":true}', event_id="evt_5")) == ItemCreate(
        {"type": "function_call_output", "call_id": CALL_ID, "output": '{"ok":true}'}, None, "evt_5")


@pytest.mark.parametrize(("frame", "expected"), [
    ({"type": "input_audio_buffer.commit"}, CommitBuffer(None)),
    ({"type": "input_audio_buffer.clear", "event_id": "e9"}, ClearBuffer("e9")),
    ({"type": "conversation.item.delete", "item_id": ITEM}, ItemDelete(ITEM, None)),
    ({"type": "conversation.item.retrieve", "item_id": ITEM, "event_id": "e7"}, ItemRetrieve(ITEM, "e7")),
    ({"type": "response.create", "response": None}, ResponseCreate({}, None)),
    ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}},
     SessionUpdate({"type": "realtime", "audio": {"input": {"turn_detection": None}}}, None)),
    ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"}}},
                                            "output_modalities": ["text"], "truncation": "auto"}},
     SessionUpdate({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"}}},
                    "output_modalities": ["text"], "truncation": "auto"}, None)),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": AUDIO_B64, "transcript": "hi"}]}},
     ItemCreate({"type": "message", "role": "user", "content": [
         {"type": "input_audio", "audio": AUDIO_B64, "transcript": "hi"}]})),
])
def test_parse_client_accepts_valid_events_the_bridge_does_not_build(frame: dict[str, Any], expected: Any) -> None:
    """Other valid GA client events (commit, clear, delete, manual turns, pcma, text output) are accepted."""
    assert parse_client(json.dumps(frame)) == expected


# -- parse_client: rejected as the real service would, with its error codes -----------------------


def _session(**changes: Any) -> dict[str, Any]:
    """The builder's session as a dict, for tampering."""
    return json.loads(rt.session_update(SETTINGS))["session"] | changes


def _misspelt_vad() -> dict[str, Any]:
    session = _session()
    vad = session["audio"]["input"]["turn_detection"]
    vad["silence_duraton_ms"] = vad.pop("silence_duration_ms")
    return session


BETA_SESSION = {"modalities": ["audio", "text"], "instructions": "x", "voice": "marin",
                "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw",
                "turn_detection": {"type": "server_vad"}}
ITEM_USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
BAD_CLIENT: list[tuple[str, Any, str, str | None]] = [
    # (id, frame without event_id (a dict) or raw text, code, param)
    ("beta-input-audio-format", {"type": "session.update",
                                 "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}},
     "unknown_parameter", "session.input_audio_format"),
    ("beta-modalities", {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}},
     "unknown_parameter", "session.modalities"),
    ("beta-session-without-type", {"type": "session.update", "session": BETA_SESSION},
     "missing_required_parameter", "session.type"),
    ("session-without-type", {"type": "session.update", "session": {"instructions": "x"}},
     "missing_required_parameter", "session.type"),
    ("session-type-unknown", {"type": "session.update", "session": {"type": "conversation"}},
     "invalid_value", "session.type"),
    ("misspelt-silence-duration", {"type": "session.update", "session": _misspelt_vad()},
     "unknown_parameter", "session.audio.input.turn_detection.silence_duraton_ms"),
    ("temperature-is-gone", {"type": "session.update", "session": _session(temperature=0.8)},
     "unknown_parameter", "session.temperature"),
    ("voice-at-top-level", {"type": "session.update", "session": _session(voice="marin")},
     "unknown_parameter", "session.voice"),
    ("audio-input-number", {"type": "session.update", "session": {"type": "realtime", "audio": {"input": 5}}},
     "invalid_type", "session.audio.input"),
    ("audio-output-string", {"type": "session.update", "session": {"type": "realtime", "audio": {"output": "x"}}},
     "invalid_type", "session.audio.output"),
    ("audio-list", {"type": "session.update", "session": {"type": "realtime", "audio": []}},
     "invalid_type", "session.audio"),
    ("turn-detection-string", {"type": "session.update",
                               "session": {"type": "realtime", "audio": {"input": {"turn_detection": "server_vad"}}}},
     "invalid_type", "session.audio.input.turn_detection"),
    ("beta-format-string", {"type": "session.update",
                            "session": {"type": "realtime", "audio": {"input": {"format": "g711_ulaw"}}}},
     "invalid_value", "session.audio.input.format"),
    ("pcm-at-8k", {"type": "session.update",
                   "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm",
                                                                                   "rate": 8000}}}}},
     "invalid_value", "session.audio.output.format"),
    ("audio-and-text-modalities", {"type": "session.update",
                                   "session": {"type": "realtime", "output_modalities": ["audio", "text"]}},
     "invalid_value", "session.output_modalities"),
    ("session-missing", {"type": "session.update"}, "missing_required_parameter", "session"),
    ("session-string", {"type": "session.update", "session": "realtime"}, "invalid_type", "session"),
    ("unknown-event-type", {"type": "session.updaet", "session": {"type": "realtime"}}, "invalid_value", "type"),
    ("beta-event-type", {"type": "transcription_session.update", "session": {}}, "invalid_value", "type"),
    ("missing-type", {"session": {"type": "realtime"}}, "missing_required_parameter", "type"),
    ("unknown-top-level-key", {"type": "input_audio_buffer.append", "audio": AUDIO_B64, "format": "pcmu"},
     "unknown_parameter", "format"),
    ("audio-not-base64", {"type": "input_audio_buffer.append", "audio": MARKER + "!"}, "invalid_value", "audio"),
    ("audio-bad-padding", {"type": "input_audio_buffer.append", "audio": "AAAAA"}, "invalid_value", "audio"),
    ("audio-missing", {"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
    ("audio-number", {"type": "input_audio_buffer.append", "audio": 12}, "invalid_type", "audio"),
    ("truncate-negative-end", {"type": "conversation.item.truncate", "item_id": ITEM, "content_index": 0,
                               "audio_end_ms": -1}, "invalid_value", "audio_end_ms"),
    ("truncate-negative-index", {"type": "conversation.item.truncate", "item_id": ITEM, "content_index": -1,
                                 "audio_end_ms": 10}, "invalid_value", "content_index"),
    ("truncate-end-string", {"type": "conversation.item.truncate", "item_id": ITEM, "content_index": 0,
                             "audio_end_ms": "1520"}, "invalid_type", "audio_end_ms"),
    ("truncate-end-float", {"type": "conversation.item.truncate", "item_id": ITEM, "content_index": 0,
                            "audio_end_ms": 1520.5}, "invalid_type", "audio_end_ms"),
    ("truncate-missing-item", {"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 1},
     "missing_required_parameter", "item_id"),
    ("assistant-with-input-text", {"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "hi"}]}},
     "invalid_value", "item.content[0].type"),
    ("user-with-output-text", {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "output_text", "text": "b"}]}},
     "invalid_value", "item.content[1].type"),
    ("system-with-beta-text", {"type": "conversation.item.create", "item": {
        "type": "message", "role": "system", "content": [{"type": "text", "text": "hi"}]}},
     "invalid_value", "item.content[0].type"),
    ("message-role-tool", {"type": "conversation.item.create", "item": ITEM_USER | {"role": "tool"}},
     "invalid_value", "item.role"),
    ("message-content-empty", {"type": "conversation.item.create", "item": ITEM_USER | {"content": []}},
     "missing_required_parameter", "item.content"),
    ("message-unknown-key", {"type": "conversation.item.create", "item": ITEM_USER | {"name": "x"}},
     "unknown_parameter", "item.name"),
    ("item-type-unknown", {"type": "conversation.item.create", "item": {"type": "image"}}, "invalid_value",
     "item.type"),
    ("item-type-list", {"type": "conversation.item.create", "item": {"type": ["message"]}}, "invalid_type",
     "item.type"),
    ("item-type-object", {"type": "conversation.item.create", "item": {"type": {"a": 1}}}, "invalid_type",
     "item.type"),
    ("function-output-missing-call-id", {"type": "conversation.item.create",
                                         "item": {"type": "function_call_output", "output": "{}"}},
     "missing_required_parameter", "item.call_id"),
    ("function-output-object", {"type": "conversation.item.create",
                                "item": {"type": "function_call_output", "call_id": CALL_ID, "output": {"ok": True}}},
     "invalid_type", "item.output"),
    ("function-output-beta-wrapper", {"type": "conversation.item.create",
                                      "item": {"type": "function_call_output", "call_id": CALL_ID, "output": "{}",
                                               "role": "tool"}}, "unknown_parameter", "item.role"),
    ("previous-item-number", {"type": "conversation.item.create", "item": ITEM_USER, "previous_item_id": 3},
     "invalid_type", "previous_item_id"),
    ("response-list", {"type": "response.create", "response": []}, "invalid_type", "response"),
    ("response-string", {"type": "response.create", "response": "go"}, "invalid_type", "response"),
    ("response-beta-modalities", {"type": "response.create", "response": {"modalities": ["audio"]}},
     "unknown_parameter", "response.modalities"),
    ("cancel-id-number", {"type": "response.cancel", "response_id": 5}, "invalid_type", "response_id"),
    ("not-json", '{"type":"input_audio_buffer.append","audio":"' + MARKER, "invalid_json", None),
    ("json-array", json.dumps([{"type": "response.create"}]), "invalid_json", None),
]


@pytest.mark.parametrize(("frame", "code", "param"), [(f, c, p) for _, f, c, p in BAD_CLIENT],
                         ids=[i for i, *_ in BAD_CLIENT])
def test_parse_client_rejects_with_the_service_error_code(frame: Any, code: str, param: str | None) -> None:
    """A bad client event raises ClientEventError with the service's code and param, and keeps the event_id."""
    if isinstance(frame, dict):
        frame = json.dumps({"event_id": "evt_42"} | frame)
    with pytest.raises(ClientEventError) as info:
        parse_client(frame)
    error = info.value
    assert isinstance(error, ProtocolError)
    assert (error.code, error.param) == (code, param)
    assert error.event_id == (None if code == "invalid_json" else "evt_42")
    assert MARKER not in str(error) and MARKER[:8] not in error.plain_message


def test_client_error_messages_read_like_the_service() -> None:
    """The two messages the bridge most likely meets in the wild read exactly like the service's."""
    with pytest.raises(ClientEventError) as info:
        parse_client(json.dumps({"type": "session.update", "session": {"type": "realtime",
                                                                        "input_audio_format": "g711_ulaw"}}))
    assert info.value.plain_message == "Unknown parameter: 'session.input_audio_format'."
    with pytest.raises(ClientEventError) as info:
        parse_client(json.dumps({"type": "session.update", "session": BETA_SESSION}))
    assert info.value.plain_message == "Missing required parameter: 'session.type'."


@pytest.mark.parametrize("text", ["{", "[]", '"x"'])
def test_invalid_json_message_is_not_prefixed_twice(text: str) -> None:
    """The message the local peer would send back says what is wrong once, without a source prefix."""
    with pytest.raises(ClientEventError) as info:
        parse_client(text)
    assert info.value.code == "invalid_json"
    assert not info.value.plain_message.startswith("realtime-client")
    assert str(info.value).count("realtime-client") == 1


def test_event_id_of_the_wrong_type_is_rejected() -> None:
    """A non-string event_id is an invalid_type error, not silently dropped."""
    with pytest.raises(ClientEventError) as info:
        parse_client(json.dumps({"type": "input_audio_buffer.commit", "event_id": 17}))
    assert (info.value.code, info.value.param) == ("invalid_type", "event_id")


# -- nothing but ProtocolError, whatever arrives --------------------------------------------------

VALUES: list[Any] = [None, 0, -1, 1.5, True, "", "x", "\u00b2", "9" * 5000, [], ["x"], {}, {"a": 1},
                     "AAA=", "!!", 2**70, MARKER]


def _corrupt(obj: Any, rnd: random.Random) -> Any:
    for _ in range(rnd.randint(1, 3)):
        obj = _corrupt_once(obj, rnd)
    return obj


def _corrupt_once(obj: Any, rnd: random.Random) -> Any:
    if isinstance(obj, dict) and obj:
        key = rnd.choice(list(obj))
        roll = rnd.random()
        if roll < 0.2:
            del obj[key]
        elif roll < 0.6 and isinstance(obj[key], (dict, list)):
            obj[key] = _corrupt_once(obj[key], rnd)
        else:
            obj[key] = copy.deepcopy(rnd.choice(VALUES))
        return obj
    if isinstance(obj, list) and obj:
        i = rnd.randrange(len(obj))
        obj[i] = _corrupt_once(obj[i], rnd) if isinstance(obj[i], (dict, list)) else copy.deepcopy(rnd.choice(VALUES))
        return obj
    return copy.deepcopy(rnd.choice(VALUES))


def test_random_corruptions_of_server_events_raise_only_protocol_error() -> None:
    """Seeded corruptions of every server case either parse or raise ProtocolError, nothing else."""
    rnd = random.Random(7)
    for _ in range(2500):
        event = _corrupt(copy.deepcopy(rnd.choice(SERVER_CASES)[0]), rnd)
        try:
            parse_server(json.dumps(event))
        except ProtocolError as exc:
            assert MARKER not in str(exc)


def test_random_corruptions_of_client_events_raise_only_client_event_error() -> None:
    """Seeded corruptions of every builder's output either parse or raise ClientEventError, nothing else."""
    rnd = random.Random(11)
    seeds = [rt.session_update(SETTINGS, event_id="e"), rt.append_audio(AUDIO_B64),
             rt.response_create(instructions="x", metadata={"a": "b"}, tool_choice="auto"),
             rt.response_cancel(RESP), rt.item_truncate(ITEM, 100), rt.item_message("user", "hi"),
             rt.item_message("assistant", "hi"), rt.item_function_output(CALL_ID, "{}")]
    for _ in range(3000):
        event = _corrupt(json.loads(rnd.choice(seeds)), rnd)
        try:
            parse_client(json.dumps(event))
        except ClientEventError as exc:
            assert exc.code in {"unknown_parameter", "missing_required_parameter", "invalid_value", "invalid_type",
                                "invalid_json"}
            quoted_type = isinstance(event, dict) and event.get("type") == MARKER  # quoted back, like the service
            if not quoted_type:
                assert MARKER not in str(exc)
