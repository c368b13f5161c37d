"""Every client event the bridge can build validates, strictly, against the official openai models."""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable

import pytest
from openai.types.realtime import (
    ConversationItemCreateEvent,
    ConversationItemTruncateEvent,
    InputAudioBufferAppendEvent,
    ResponseCancelEvent,
    ResponseCreateEvent,
    SessionUpdateEvent,
)
from openai_strict import CLIENT, assert_strict, extra_keys, validate_client, validate_server
from pydantic import ValidationError

from voicebridge.edges.protocol import realtime as rt
from voicebridge.edges.protocol.realtime import SessionSettings

END_CALL = {
    "type": "function",
    "name": "end_call",
    "description": "Hang up once the caller has said goodbye.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}
ADD_ITEM = {
    "type": "function",
    "name": "add_item",
    "description": "Add a menu item to the order.",
    "parameters": {
        "type": "object",
        "properties": {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
        "required": ["item", "quantity"],
    },
}
INSTRUCTIONS = "You take orders for a pizza shop. Keep answers short."

# (builder, args, kwargs, the openai class it must validate as). Every builder that returns wire
# text needs at least one row: test_every_builder_has_a_validation_case enforces it.
Case = tuple[Callable[..., str], tuple[Any, ...], dict[str, Any], type]
CASES: list[Case] = [
    (rt.session_update, (SessionSettings(INSTRUCTIONS),), {}, SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, tools=(END_CALL, ADD_ITEM)),), {"event_id": "evt_s1"},
     SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, tools=(END_CALL,), audio_format="pcm16", voice="cedar"),), {},
     SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, transcription_model=None),), {}, SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, language=None),), {}, SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, noise_reduction=None),), {}, SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, noise_reduction="far_field"),), {}, SessionUpdateEvent),
    (rt.session_update, (SessionSettings(INSTRUCTIONS, idle_timeout_ms=8000, interrupt_response=True,
                                         create_response=False, vad_threshold=0.7, silence_duration_ms=650),), {},
     SessionUpdateEvent),
    (rt.session_update, (SessionSettings("", audio_format="pcm16", transcription_model=None, noise_reduction=None,
                                         idle_timeout_ms=5000),), {}, SessionUpdateEvent),
    (rt.append_audio, ("/////w==",), {}, InputAudioBufferAppendEvent),
    (rt.append_audio, ("f" * 216,), {}, InputAudioBufferAppendEvent),
    (rt.response_create, (), {}, ResponseCreateEvent),
    (rt.response_create, (), {"instructions": "Greet the caller and ask what they would like."}, ResponseCreateEvent),
    (rt.response_create, (), {"metadata": {"purpose": "greeting"}}, ResponseCreateEvent),
    (rt.response_create, (), {"tool_choice": "none"}, ResponseCreateEvent),
    (rt.response_create, (), {"instructions": "Say goodbye.", "metadata": {"purpose": "goodbye", "turn": "7"},
                              "tool_choice": "required", "event_id": "evt_r1"}, ResponseCreateEvent),
    (rt.response_cancel, (), {}, ResponseCancelEvent),
    (rt.response_cancel, ("resp_ABC123",), {}, ResponseCancelEvent),
    (rt.response_cancel, ("resp_ABC123",), {"event_id": "evt_c1"}, ResponseCancelEvent),
    (rt.item_truncate, ("item_ABC", 1520), {}, ConversationItemTruncateEvent),
    (rt.item_truncate, ("item_ABC", 0), {"content_index": 0, "event_id": "evt_t1"}, ConversationItemTruncateEvent),
    (rt.item_message, ("user", "Caller pressed 1"), {}, ConversationItemCreateEvent),
    (rt.item_message, ("system", "The kitchen closes in ten minutes."), {"previous_item_id": "root"},
     ConversationItemCreateEvent),
    (rt.item_message, ("assistant", "Your order is one large margherita."), {"event_id": "evt_m1"},
     ConversationItemCreateEvent),
    (rt.item_function_output, ("call_abc", json.dumps({"ok": True, "total_cents": 1619})), {},
     ConversationItemCreateEvent),
    (rt.item_function_output, ("call_abc", "not json, still a string"), {"event_id": "evt_f1"},
     ConversationItemCreateEvent),
]


def _case_id(case: Case) -> str:
    builder, args, kwargs, _ = case
    return f"{builder.__name__}-{len(args)}-{'-'.join(sorted(kwargs)) or 'plain'}"


def discovered_builders() -> set[str]:
    """Public functions of the realtime module that return wire text (annotated `-> str`)."""
    names = set()
    for name, fn in inspect.getmembers(rt, inspect.isfunction):
        if name.startswith("_") or name.startswith("parse") or fn.__module__ != rt.__name__:
            continue
        if inspect.signature(fn).return_annotation in ("str", str):
            names.add(name)
    return names


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_builder_output_validates_strictly_against_openai_models(case: Case) -> None:
    """The builder's text validates as the right openai event, with no unknown key and nothing coerced."""
    builder, args, kwargs, expected = case
    text = builder(*args, **kwargs)
    model = validate_client(text)
    assert type(model) is expected
    if "event_id" in kwargs:
        assert model.event_id == kwargs["event_id"]


def test_every_builder_has_a_validation_case() -> None:
    """A new `-> str` builder in the realtime module fails this test until it gets a validation case."""
    found = discovered_builders()
    covered = {builder.__name__ for builder, *_ in CASES}
    assert found, "no builders discovered: the discovery itself is broken"
    assert found - covered == set(), f"builders without a validation case: {sorted(found - covered)}"
    assert covered - found == set(), f"cases for functions that are not builders: {sorted(covered - found)}"


def test_builder_discovery_sees_the_known_builders() -> None:
    """Discovery finds the builders that exist today and no parser or private helper."""
    assert {"session_update", "append_audio", "response_create", "response_cancel", "item_truncate",
            "item_message", "item_function_output"} <= discovered_builders()
    assert not {"parse_server", "parse_client", "_event"} & discovered_builders()


def test_builder_discovery_picks_up_a_newly_added_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder added to the module later is discovered, so the coverage test would fail for it."""

    def input_commit(event_id: str | None = None) -> str:
        return json.dumps({"type": "input_audio_buffer.commit"})

    input_commit.__module__ = rt.__name__
    monkeypatch.setattr(rt, "input_commit", input_commit, raising=False)
    assert "input_commit" in discovered_builders()
    assert "input_commit" not in {builder.__name__ for builder, *_ in CASES}


def test_session_update_matches_the_documented_phone_settings() -> None:
    """The validated session carries μ-law both ways, server VAD with the settings given, and the tools."""
    settings = SessionSettings(INSTRUCTIONS, tools=(END_CALL,), idle_timeout_ms=8000)
    model = validate_client(rt.session_update(settings))
    session = model.session
    assert session.type == "realtime"
    assert session.output_modalities == ["audio"]
    assert session.audio.input.format.type == "audio/pcmu"
    assert session.audio.output.format.type == "audio/pcmu"
    vad = session.audio.input.turn_detection
    assert (vad.type, vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms, vad.idle_timeout_ms) == (
        "server_vad", 0.5, 300, 500, 8000)
    assert vad.interrupt_response is False and vad.create_response is True
    assert [t.name for t in session.tools] == ["end_call"]
    assert session.max_output_tokens == "inf"


def test_pcm16_session_uses_24khz_pcm_both_ways() -> None:
    """The pcm16 variant asks for 24 kHz PCM in and out."""
    model = validate_client(rt.session_update(SessionSettings(INSTRUCTIONS, audio_format="pcm16")))
    for fmt in (model.session.audio.input.format, model.session.audio.output.format):
        assert (fmt.type, fmt.rate) == ("audio/pcm", 24000)


def test_strict_checker_catches_a_misspelt_vad_key() -> None:
    """`silence_duraton_ms` passes the openai models but not the strict checker, which names its path."""
    frame = json.loads(rt.session_update(SessionSettings(INSTRUCTIONS)))
    vad = frame["session"]["audio"]["input"]["turn_detection"]
    vad["silence_duraton_ms"] = vad.pop("silence_duration_ms")
    text = json.dumps(frame)
    model = CLIENT.validate_json(text)  # the official models alone accept the typo
    with pytest.raises(AssertionError, match=r"\$\.session\.audio\.input\.turn_detection\.silence_duraton_ms"):
        assert_strict(model)
    with pytest.raises(AssertionError, match="silence_duraton_ms"):
        validate_client(text)


def test_strict_checker_finds_extra_keys_inside_lists() -> None:
    """An unknown key inside a message's content list is reported with its index."""
    frame = json.loads(rt.item_message("user", "hello"))
    frame["item"]["content"][0]["txet"] = "typo"
    assert extra_keys(CLIENT.validate_python(frame)) == ["$.item.content[0].txet"]


def test_strict_validation_catches_a_coerced_value() -> None:
    """A number sent as a string validates in lax pydantic, but the strict round trip rejects it."""
    frame = json.loads(rt.item_truncate("item_ABC", 1520))
    frame["audio_end_ms"] = "1520"
    CLIENT.validate_python(frame)  # lax mode coerces it
    with pytest.raises(AssertionError, match="changed the frame"):
        validate_client(json.dumps(frame))


def test_beta_shaped_session_fails_validation() -> None:
    """A beta session (no `type`, `input_audio_format`) is not a GA `session.update`."""
    beta = {"type": "session.update", "session": {"modalities": ["audio", "text"], "input_audio_format": "g711_ulaw"}}
    with pytest.raises(ValidationError):
        validate_client(json.dumps(beta))


def test_beta_event_type_fails_validation() -> None:
    """The beta name `response.audio.delta` is not a GA server event."""
    beta = {"type": "response.audio.delta", "event_id": "e1", "response_id": "r", "item_id": "i",
            "output_index": 0, "content_index": 0, "delta": "AAAA"}
    with pytest.raises(ValidationError):
        validate_server(json.dumps(beta))


def test_server_validation_accepts_a_ga_event_and_lax_mode_allows_service_extras() -> None:
    """`validate_server` passes a clean GA event; with strict=False it also takes the service's extra keys."""
    delta = {"type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1",
             "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "/////w=="}
    assert validate_server(json.dumps(delta)).delta == "/////w=="
    created = {"type": "session.created", "event_id": "event_0",
               "session": {"type": "realtime", "id": "sess_1", "object": "realtime.session", "expires_at": 1}}
    with pytest.raises(AssertionError, match=r"\$\.session\.(id|object|expires_at)"):
        validate_server(json.dumps(created))
    assert validate_server(json.dumps(created), strict=False).session.type == "realtime"
