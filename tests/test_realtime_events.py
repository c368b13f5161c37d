"""Server-event builders of the local Realtime peer: GA shapes, session defaults and merging."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from openai.types.realtime import RealtimeServerEvent
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

from openai_strict import extra_keys
from voicebridge.peers import realtime_events as ev

SERVER = TypeAdapter(RealtimeServerEvent)
SESSION_KEYS_ADDED_BY_SERVICE = {"id", "object", "expires_at"}  # protocols.md section 6




def validate_server_event(event: dict[str, Any]) -> BaseModel:
    """Validate as `RealtimeServerEvent` with no unknown key anywhere; the model must round-trip."""
    model = SERVER.validate_python(event)
    assert model.type == event["type"]
    allowed: set[str] = set()
    if event["type"] in ("session.created", "session.updated"):
        allowed = {f".session.{k}" for k in SESSION_KEYS_ADDED_BY_SERVICE}
        session = RealtimeSessionCreateResponse.model_validate(event["session"])
        assert extra_keys(session) == [], extra_keys(session)
    unknown = [k for k in extra_keys(model, "") if k not in allowed]
    assert unknown == [], f"{event['type']}: unknown keys {unknown}"
    assert model.model_dump(mode="json", exclude_unset=True) == event
    return model


ITEM = ev.assistant_item("item_1", status="completed", content=[ev.audio_content("Hello there.")])
CALL = ev.function_call_item("item_2", call_id="call_1", name="add_item", arguments='{"size":"large"}',
                             status="completed")
USAGE = ev.usage(input_text=300, input_audio=400, cached_text=256, cached_audio=320, output_text=9, output_audio=23)
RESPONSE = ev.response_object(
    "resp_1", conversation_id="conv_1", status="completed", output=[ITEM, CALL], output_modalities=["audio"],
    audio_format={"type": "audio/pcmu"}, voice="marin", max_output_tokens="inf", metadata={"purpose": "greeting"},
    usage=USAGE)
SESSION = ev.session_object(ev.default_session("gpt-realtime"), session_id="sess_1", expires_at=1_700_003_600)

EVERY_EVENT: list[dict[str, Any]] = [
    ev.session_created("e", SESSION),
    ev.session_updated("e", SESSION),
    ev.error("e", message="Unknown parameter: 'session.modalities'.", code="unknown_parameter",
             param="session.modalities", client_event_id="client_1"),
    ev.error("e", message="Your session hit the maximum duration of 60 minutes.", code="session_expired"),
    ev.conversation_item_added("e", ev.user_audio_item("item_0"), None),
    ev.conversation_item_done("e", ev.user_audio_item("item_0", "Can I get a large pepperoni pizza?"), "item_x"),
    ev.conversation_item_added("e", ev.client_item({"type": "message", "role": "system", "content": [
        {"type": "input_text", "text": "Caller pressed 1"}]}, "item_3"), "item_2"),
    ev.conversation_item_done("e", ev.client_item({"type": "function_call_output", "call_id": "call_1",
                                                   "output": '{"ok":true}'}, "item_4"), "item_3"),
    ev.conversation_item_done("e", ev.client_item({"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": "Hi!"}]}, "item_5"), None),
    ev.conversation_item_retrieved("e", ITEM),
    ev.conversation_item_deleted("e", "item_1"),
    ev.conversation_item_truncated("e", "item_1", 0, 1500),
    ev.transcription_completed("e", "item_0", "Yes, that's right.", audio_ms=1240),
    ev.speech_started("e", "item_0", 200),
    ev.speech_stopped("e", "item_0", 2900),
    ev.committed("e", "item_0", None),
    ev.cleared("e"),
    ev.timeout_triggered("e", "item_9", 4000, 10000),
    ev.response_created("e", ev.response_object(
        "resp_1", conversation_id="conv_1", status="in_progress", output=[], output_modalities=["audio"],
        audio_format={"type": "audio/pcm", "rate": 24000}, voice="marin", max_output_tokens=4096, metadata=None)),
    ev.response_done("e", RESPONSE),
    ev.response_done("e", ev.response_object(
        "resp_2", conversation_id="conv_1", status="cancelled", output=[], output_modalities=["audio"],
        audio_format={"type": "audio/pcmu"}, voice="marin", max_output_tokens="inf", metadata=None,
        status_details={"type": "cancelled", "reason": "turn_detected"}, usage=USAGE)),
    ev.rate_limits_updated("e", requests_remaining=4999, tokens_remaining=30000),
    ev.output_item_added("e", "resp_1", 0, ev.assistant_item("item_1", status="in_progress", content=[])),
    ev.output_item_done("e", "resp_1", 1, CALL),
    ev.content_part_added("e", "resp_1", "item_1", 0, {"type": "audio", "transcript": ""}),
    ev.content_part_done("e", "resp_1", "item_1", 0, {"type": "audio", "transcript": "Hello there."}),
    ev.content_part_done("e", "resp_1", "item_1", 0, {"type": "text", "text": "Hello there."}),
    ev.output_audio_delta("e", "resp_1", "item_1", 0, "//8="),
    ev.output_audio_done("e", "resp_1", "item_1", 0),
    ev.output_audio_transcript_delta("e", "resp_1", "item_1", 0, "Hello "),
    ev.output_audio_transcript_done("e", "resp_1", "item_1", 0, "Hello there."),
    ev.output_text_delta("e", "resp_1", "item_1", 0, "Hello "),
    ev.output_text_done("e", "resp_1", "item_1", 0, "Hello there."),
    ev.function_call_arguments_delta("e", "resp_1", "item_2", 1, "call_1", '{"size":'),
    ev.function_call_arguments_done("e", "resp_1", "item_2", 1, "call_1", "add_item", '{"size":"large"}'),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=[f"{i}-{e['type']}" for i, e in enumerate(EVERY_EVENT)])
def test_every_builder_makes_a_valid_ga_server_event(event: dict[str, Any]) -> None:
    """Each builder's event validates as a GA server event with no unknown keys."""
    validate_server_event(json.loads(json.dumps(event)))


def test_every_event_type_the_peer_emits_has_a_builder_here() -> None:
    """The builders cover every server event type a phone bridge sees from the peer."""
    covered = {e["type"] for e in EVERY_EVENT}
    assert covered >= {
        "session.created", "session.updated", "error", "conversation.item.added", "conversation.item.done",
        "conversation.item.truncated", "conversation.item.input_audio_transcription.completed",
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "input_audio_buffer.timeout_triggered", "response.created", "response.done", "rate_limits.updated",
        "response.output_item.added", "response.output_item.done", "response.content_part.added",
        "response.content_part.done", "response.output_audio.delta", "response.output_audio.done",
        "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
    }


def test_validator_rejects_a_misspelled_optional_key() -> None:
    """A typo in an optional key is caught by the extras walk, not silently accepted."""
    bad = copy.deepcopy(ev.session_updated("e", SESSION))
    bad["session"]["audio"]["input"]["turn_detection"]["silence_duraton_ms"] = 500
    with pytest.raises(AssertionError, match="silence_duraton_ms"):
        validate_server_event(bad)
    wrong = ev.speech_stopped("e", "item_0", 2900)
    wrong["audio_end_msec"] = 1
    with pytest.raises(AssertionError, match="audio_end_msec"):
        validate_server_event(wrong)


def test_beta_event_names_are_not_ga_events() -> None:
    """A beta-era event type (response.audio.delta) does not validate as a GA server event."""
    beta = ev.output_audio_delta("e", "resp_1", "item_1", 0, "//8=")
    beta["type"] = "response.audio.delta"
    with pytest.raises(ValidationError):
        SERVER.validate_python(beta)


def test_default_session_is_a_complete_realtime_session() -> None:
    """session.created carries the full default config plus id, object and expires_at."""
    session = SESSION
    assert session["object"] == "realtime.session" and session["id"] == "sess_1"
    assert session["model"] == "gpt-realtime" and session["type"] == "realtime"
    assert session["audio"]["input"]["turn_detection"] == ev.VAD_DEFAULTS
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    model = RealtimeSessionCreateResponse.model_validate(session)
    assert model.expires_at == 1_700_003_600


def test_session_update_keeps_omitted_fields() -> None:
    """Merging changes only what the update names, down to single turn-detection fields."""
    current = ev.default_session("gpt-realtime")
    merged = ev.merge_session(current, {
        "type": "realtime", "instructions": "Take pizza orders.",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad",
                                                                                  "silence_duration_ms": 700}},
                  "output": {"voice": "marin"}},
    })
    assert merged["instructions"] == "Take pizza orders."
    assert merged["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert merged["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin",
                                         "speed": 1.0}
    vad = merged["audio"]["input"]["turn_detection"]
    assert vad["silence_duration_ms"] == 700 and vad["threshold"] == 0.5 and vad["prefix_padding_ms"] == 300
    assert merged["tools"] == [] and merged["tool_choice"] == "auto"
    assert current["instructions"] == ev.DEFAULT_INSTRUCTIONS  # the input is not modified


def test_session_update_null_clears_and_a_new_vad_type_starts_from_its_defaults() -> None:
    """`turn_detection: null` turns VAD off; switching type starts from that type's defaults."""
    off = ev.merge_session(ev.default_session("m"), {"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    assert off["audio"]["input"]["turn_detection"] is None
    back = ev.merge_session(off, {"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "server_vad", "threshold": 0.7}}}})
    assert back["audio"]["input"]["turn_detection"] == {**ev.VAD_DEFAULTS, "threshold": 0.7}
    semantic = ev.merge_session(back, {"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "semantic_vad", "eagerness": "high"}}}})
    assert semantic["audio"]["input"]["turn_detection"] == {**ev.SEMANTIC_VAD_DEFAULTS, "eagerness": "high"}
    validate_server_event(ev.session_updated("e", ev.session_object(semantic, session_id="s", expires_at=1)))


def test_usage_counts_cached_tokens_inside_the_input() -> None:
    """Totals add up the way the cost formula in protocols.md expects."""
    u = USAGE
    assert u["input_tokens"] == 700 and u["output_tokens"] == 32 and u["total_tokens"] == 732
    assert u["input_token_details"]["cached_tokens"] == 576
    assert u["input_token_details"]["cached_tokens_details"] == {"text_tokens": 256, "audio_tokens": 320,
                                                                 "image_tokens": 0}


def test_ids_look_like_the_services() -> None:
    """Ids carry the service's prefixes and are unique."""
    ids = ev.IdMaker(seed=7)
    made = [ids.event(), ids.item(), ids.response(), ids.call(), ids.session(), ids.conversation()]
    assert [m.split("_")[0] for m in made] == ["event", "item", "resp", "call", "sess", "conv"]
    assert all(len(m) <= 32 for m in made)
    assert len({ids.item() for _ in range(1000)}) == 1000


def test_refused_upgrade_body_is_an_openai_error_object() -> None:
    """The HTTP body of a refused upgrade is the service's JSON error shape."""
    body = json.loads(ev.http_error_body("Incorrect API key provided.", type="invalid_request_error",
                                         code="invalid_api_key"))
    assert body == {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}}
