"""Server events of the OpenAI Realtime API (GA), as the local Realtime peer sends them.

Pure builders: each function returns one event as a dict in the GA wire shape (the peer
serialises it). Every shape here validates against `openai.types.realtime.RealtimeServerEvent`
with no unknown keys, except the three keys the real service adds to the session object
(`id`, `object`, `expires_at`; protocols.md section 6). Also here: the session's default
configuration and how a `session.update` merges into it (omitted fields stay unchanged).
"""

from __future__ import annotations

import copy
import json
import random
import string
from typing import Any

DEFAULT_INSTRUCTIONS = "You are a helpful, witty, and friendly AI assistant. Keep your answers short."
VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
PCM24K = {"type": "audio/pcm", "rate": 24000}
_ALPHABET = string.ascii_letters + string.digits


class IdMaker:
    """Ids shaped like the real service's (`event_…`, `item_…`, `resp_…`, `call_…`, …)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def new(self, prefix: str, length: int = 22) -> str:
        return prefix + "_" + "".join(self._rng.choices(_ALPHABET, k=length))

    def event(self) -> str:
        return self.new("event", 21)

    def item(self) -> str:
        return self.new("item", 21)

    def response(self) -> str:
        return self.new("resp", 21)

    def call(self) -> str:
        return self.new("call", 16)

    def session(self) -> str:
        return self.new("sess", 21)

    def conversation(self) -> str:
        return self.new("conv", 21)


# -- session configuration ---------------------------------------------------------------


def default_session(model: str) -> dict[str, Any]:
    """The configuration a new session starts with (what `session.created` shows)."""
    return {
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": dict(PCM24K),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(VAD_DEFAULTS),
            },
            "output": {"format": dict(PCM24K), "voice": "alloy", "speed": 1.0},
        },
    }


def merge_session(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The effective configuration after `session.update`: omitted fields keep their value.

    `update` has already passed `parse_client`. `audio.input`/`audio.output` merge key by key;
    a `turn_detection` object merges into the current one of the same type (a new type starts
    from that type's defaults); `null` clears a field.
    """
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key == "audio":
            for side in ("input", "output"):
                for k, v in ((value or {}).get(side) or {}).items():
                    target = merged["audio"][side]
                    if k == "turn_detection" and isinstance(v, dict):
                        target[k] = _merge_vad(target.get(k), v)
                    else:
                        target[k] = copy.deepcopy(v)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_vad(current: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    kind = update.get("type", current.get("type") if current else "server_vad")
    base = SEMANTIC_VAD_DEFAULTS if kind == "semantic_vad" else VAD_DEFAULTS
    start = dict(current) if current and current.get("type") == kind else dict(base)
    start.update(update)
    start["type"] = kind
    return start


def session_object(config: dict[str, Any], *, session_id: str, expires_at: int) -> dict[str, Any]:
    """The session as the real service shows it: the configuration plus `id`, `object`, `expires_at`."""
    return {"object": "realtime.session", "id": session_id, "expires_at": expires_at, **copy.deepcopy(config)}


def session_created(event_id: str, session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.created", "event_id": event_id, "session": session}


def session_updated(event_id: str, session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.updated", "event_id": event_id, "session": session}


# -- errors -------------------------------------------------------------------------------


def error(
    event_id: str, *, message: str, type: str = "invalid_request_error", code: str | None = None,
    param: str | None = None, client_event_id: str | None = None,
) -> dict[str, Any]:
    """`error`; `client_event_id` is the `event_id` of the client event at fault (often null)."""
    return {
        "type": "error",
        "event_id": event_id,
        "error": {"type": type, "code": code, "message": message, "param": param, "event_id": client_event_id},
    }


def http_error_body(message: str, *, type: str, code: str | None) -> bytes:
    """The JSON body of a refused WebSocket upgrade, as the real HTTP front end sends it."""
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


# -- conversation items -------------------------------------------------------------------


def user_audio_item(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    """A user message made from committed input audio (the transcript comes later, if at all)."""
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def assistant_item(item_id: str, *, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": "assistant",
            "content": content}


def audio_content(transcript: str) -> dict[str, Any]:
    return {"type": "output_audio", "transcript": transcript}


def text_content(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text}


def function_call_item(item_id: str, *, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
            "name": name, "call_id": call_id, "arguments": arguments}


def client_item(item: dict[str, Any], item_id: str) -> dict[str, Any]:
    """An item the client created, as the server echoes it (id, object and status filled in)."""
    out = {"id": item_id, "object": "realtime.item", **{k: copy.deepcopy(v) for k, v in item.items() if k != "id"}}
    out.setdefault("status", "completed")
    return out


def conversation_item_added(event_id: str, item: dict[str, Any], previous_item_id: str | None) -> dict[str, Any]:
    return {"type": "conversation.item.added", "event_id": event_id, "previous_item_id": previous_item_id,
            "item": item}


def conversation_item_done(event_id: str, item: dict[str, Any], previous_item_id: str | None) -> dict[str, Any]:
    return {"type": "conversation.item.done", "event_id": event_id, "previous_item_id": previous_item_id,
            "item": item}


def conversation_item_retrieved(event_id: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.retrieved", "event_id": event_id, "item": item}


def conversation_item_deleted(event_id: str, item_id: str) -> dict[str, Any]:
    return {"type": "conversation.item.deleted", "event_id": event_id, "item_id": item_id}


def conversation_item_truncated(event_id: str, item_id: str, content_index: int, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "conversation.item.truncated", "event_id": event_id, "item_id": item_id,
            "content_index": content_index, "audio_end_ms": audio_end_ms}


def transcription_completed(event_id: str, item_id: str, transcript: str, *, audio_ms: float) -> dict[str, Any]:
    """`…input_audio_transcription.completed`, billed in tokens (~10 audio tokens per second)."""
    audio_tokens = max(1, round(audio_ms / 100))
    text_tokens = text_token_count(transcript)
    return {
        "type": "conversation.item.input_audio_transcription.completed", "event_id": event_id,
        "item_id": item_id, "content_index": 0, "transcript": transcript,
        "usage": {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": text_tokens,
                  "total_tokens": audio_tokens + text_tokens,
                  "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0}},
    }


# -- input audio buffer -------------------------------------------------------------------


def speech_started(event_id: str, item_id: str, audio_start_ms: int) -> dict[str, Any]:
    return {"type": "input_audio_buffer.speech_started", "event_id": event_id, "audio_start_ms": audio_start_ms,
            "item_id": item_id}


def speech_stopped(event_id: str, item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "input_audio_buffer.speech_stopped", "event_id": event_id, "audio_end_ms": audio_end_ms,
            "item_id": item_id}


def committed(event_id: str, item_id: str, previous_item_id: str | None) -> dict[str, Any]:
    return {"type": "input_audio_buffer.committed", "event_id": event_id, "previous_item_id": previous_item_id,
            "item_id": item_id}


def cleared(event_id: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.cleared", "event_id": event_id}


def timeout_triggered(event_id: str, item_id: str, audio_start_ms: int, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "input_audio_buffer.timeout_triggered", "event_id": event_id, "audio_start_ms": audio_start_ms,
            "audio_end_ms": audio_end_ms, "item_id": item_id}


# -- responses ----------------------------------------------------------------------------


def text_token_count(text: str) -> int:
    """About four characters per text token."""
    return (len(text) + 3) // 4


def usage(
    *, input_text: int, input_audio: int, cached_text: int, cached_audio: int, output_text: int, output_audio: int,
) -> dict[str, Any]:
    """`response.usage`; cached tokens are counted inside the input counts."""
    total_in = input_text + input_audio
    total_out = output_text + output_audio
    return {
        "total_tokens": total_in + total_out,
        "input_tokens": total_in,
        "output_tokens": total_out,
        "input_token_details": {
            "text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def response_object(
    response_id: str, *, conversation_id: str | None, status: str, output: list[dict[str, Any]],
    output_modalities: list[str], audio_format: dict[str, Any], voice: str, max_output_tokens: int | str,
    metadata: dict[str, str] | None, status_details: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": list(output_modalities),
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": dict(audio_format), "voice": voice}},
        "usage": usage,
        "metadata": dict(metadata) if metadata else None,
    }


def response_created(event_id: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.created", "event_id": event_id, "response": response}


def response_done(event_id: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.done", "event_id": event_id, "response": response}


def rate_limits_updated(event_id: str, *, requests_remaining: int, tokens_remaining: int) -> dict[str, Any]:
    return {
        "type": "rate_limits.updated", "event_id": event_id,
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": requests_remaining, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": tokens_remaining,
             "reset_seconds": round((40000 - tokens_remaining) * 60 / 40000, 3)},
        ],
    }


def output_item_added(event_id: str, response_id: str, output_index: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.output_item.added", "event_id": event_id, "response_id": response_id,
            "output_index": output_index, "item": item}


def output_item_done(event_id: str, response_id: str, output_index: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.output_item.done", "event_id": event_id, "response_id": response_id,
            "output_index": output_index, "item": item}


def _part_event(kind: str, event_id: str, response_id: str, item_id: str, output_index: int,
                **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": event_id, "response_id": response_id, "item_id": item_id,
            "output_index": output_index, "content_index": 0, **fields}


def content_part_added(event_id: str, response_id: str, item_id: str, output_index: int,
                       part: dict[str, Any]) -> dict[str, Any]:
    """`part` is `{"type": "audio", "transcript": …}` or `{"type": "text", "text": …}`."""
    return _part_event("response.content_part.added", event_id, response_id, item_id, output_index, part=part)


def content_part_done(event_id: str, response_id: str, item_id: str, output_index: int,
                      part: dict[str, Any]) -> dict[str, Any]:
    return _part_event("response.content_part.done", event_id, response_id, item_id, output_index, part=part)


def output_audio_delta(event_id: str, response_id: str, item_id: str, output_index: int,
                       delta_b64: str) -> dict[str, Any]:
    return _part_event("response.output_audio.delta", event_id, response_id, item_id, output_index, delta=delta_b64)


def output_audio_done(event_id: str, response_id: str, item_id: str, output_index: int) -> dict[str, Any]:
    return _part_event("response.output_audio.done", event_id, response_id, item_id, output_index)


def output_audio_transcript_delta(event_id: str, response_id: str, item_id: str, output_index: int,
                                  delta: str) -> dict[str, Any]:
    return _part_event("response.output_audio_transcript.delta", event_id, response_id, item_id, output_index,
                       delta=delta)


def output_audio_transcript_done(event_id: str, response_id: str, item_id: str, output_index: int,
                                 transcript: str) -> dict[str, Any]:
    return _part_event("response.output_audio_transcript.done", event_id, response_id, item_id, output_index,
                       transcript=transcript)


def output_text_delta(event_id: str, response_id: str, item_id: str, output_index: int, delta: str) -> dict[str, Any]:
    return _part_event("response.output_text.delta", event_id, response_id, item_id, output_index, delta=delta)


def output_text_done(event_id: str, response_id: str, item_id: str, output_index: int, text: str) -> dict[str, Any]:
    return _part_event("response.output_text.done", event_id, response_id, item_id, output_index, text=text)


def function_call_arguments_delta(event_id: str, response_id: str, item_id: str, output_index: int, call_id: str,
                                  delta: str) -> dict[str, Any]:
    return {"type": "response.function_call_arguments.delta", "event_id": event_id, "response_id": response_id,
            "item_id": item_id, "output_index": output_index, "call_id": call_id, "delta": delta}


def function_call_arguments_done(event_id: str, response_id: str, item_id: str, output_index: int, call_id: str,
                                 name: str, arguments: str) -> dict[str, Any]:
    """`arguments` is a JSON **string**, as on the wire."""
    return {"type": "response.function_call_arguments.done", "event_id": event_id, "response_id": response_id,
            "item_id": item_id, "output_index": output_index, "call_id": call_id, "name": name,
            "arguments": arguments}
