"""OpenAI Realtime API (GA), sans I/O: text frames <-> attrs events.

- the bridge's side: builders for every client event the bridge sends (each returns the wire
  text; tests validate every one against `openai.types.realtime.RealtimeClientEvent`), and
  `parse_server` for the server events the bridge uses. Other server events come back as
  `OtherServerEvent(type)`: new event types are never an error.
- the server's side, for the local Realtime peer: `parse_client`, as strict as the real service
  (unknown parameters and beta-shaped sessions are rejected with the service's error codes).

Why one module of this length: it is the whole Realtime wire protocol, both directions, kept
next to each other so a field renamed on one side is seen on the other; each event is a few
lines.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import attrs

from voicebridge.edges.protocol._codec import Fields, b64_len, dumps, loads
from voicebridge.edges.protocol.errors import ProtocolError

SOURCE = "realtime"
MAX_SERVER_FRAME_CHARS = 4 * 1024 * 1024
MAX_CLIENT_FRAME_CHARS = 16 * 1024 * 1024  # append takes up to 15 MiB of audio
AUDIO_FORMATS: dict[str, dict[str, Any]] = {"pcmu": {"type": "audio/pcmu"}, "pcm16": {"type": "audio/pcm", "rate": 24000}}


# -- client events (bridge -> OpenAI) ---------------------------------------------------------


@attrs.frozen
class SessionSettings:
    """What the bridge configures on every (re)connected session."""

    instructions: str
    tools: tuple[dict[str, Any], ...] = ()
    voice: str = "marin"
    audio_format: str = "pcmu"  # "pcmu" or "pcm16"
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    # The bridge owns barge-in: it decides whether the caller interrupted audio they were
    # hearing, and cancels/truncates itself (protocols.md section 7).
    interrupt_response: bool = False
    idle_timeout_ms: int | None = None
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    language: str | None = "en"  # the transcription's language; None: it detects the language
    noise_reduction: str | None = "near_field"


def transcription_language(languages: tuple[str, ...]) -> str | None:
    """The business's one language for the transcription (ISO-639-1: "es" for "es_MX"); None (it detects
    the language) when the business has several."""
    return languages[0].partition("_")[0] if len(languages) == 1 else None


def session_update(s: SessionSettings, event_id: str | None = None) -> str:
    fmt = AUDIO_FORMATS[s.audio_format]
    vad: dict[str, Any] = {
        "type": "server_vad",
        "threshold": s.vad_threshold,
        "prefix_padding_ms": s.prefix_padding_ms,
        "silence_duration_ms": s.silence_duration_ms,
        "create_response": s.create_response,
        "interrupt_response": s.interrupt_response,
    }
    if s.idle_timeout_ms is not None:
        vad["idle_timeout_ms"] = s.idle_timeout_ms
    audio_in: dict[str, Any] = {"format": dict(fmt), "turn_detection": vad}
    audio_in["noise_reduction"] = {"type": s.noise_reduction} if s.noise_reduction else None
    if s.transcription_model:
        tr: dict[str, Any] = {"model": s.transcription_model}
        if s.language:
            tr["language"] = s.language
        audio_in["transcription"] = tr
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": s.instructions,
        "audio": {"input": audio_in, "output": {"format": dict(fmt), "voice": s.voice}},
        "tools": [dict(t) for t in s.tools],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
    }
    return _event("session.update", event_id, session=session)


def append_audio(audio_b64: str) -> str:
    """`input_audio_buffer.append`; built by hand, it is the per-frame hot path."""
    return '{"type":"input_audio_buffer.append","audio":"' + audio_b64 + '"}'


def response_create(
    *, instructions: str | None = None, metadata: dict[str, str] | None = None,
    tool_choice: str | None = None, event_id: str | None = None,
) -> str:
    response: dict[str, Any] = {}
    if instructions is not None:
        response["instructions"] = instructions
    if metadata:
        response["metadata"] = dict(metadata)
    if tool_choice is not None:
        response["tool_choice"] = tool_choice
    return _event("response.create", event_id, **({"response": response} if response else {}))


def response_cancel(response_id: str | None = None, event_id: str | None = None) -> str:
    return _event("response.cancel", event_id, **({"response_id": response_id} if response_id else {}))


def item_truncate(item_id: str, audio_end_ms: int, content_index: int = 0, event_id: str | None = None) -> str:
    return _event(
        "conversation.item.truncate", event_id,
        item_id=item_id, content_index=content_index, audio_end_ms=int(audio_end_ms),
    )


def item_message(role: str, text: str, *, previous_item_id: str | None = None, event_id: str | None = None) -> str:
    """A text message item: `user`/`system` take `input_text`, `assistant` takes `output_text`."""
    if role not in ("user", "system", "assistant"):
        raise ValueError(f"role must be user, system or assistant, not {role!r}")
    kind = "output_text" if role == "assistant" else "input_text"
    item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    extra = {"previous_item_id": previous_item_id} if previous_item_id else {}
    return _event("conversation.item.create", event_id, item=item, **extra)


def item_function_output(call_id: str, output: str, event_id: str | None = None) -> str:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return _event("conversation.item.create", event_id, item=item)


def _event(kind: str, event_id: str | None, **fields: Any) -> str:
    msg: dict[str, Any] = {"type": kind}
    if event_id is not None:
        msg["event_id"] = event_id
    msg.update(fields)
    return dumps(msg)


# -- server events (OpenAI -> bridge) ---------------------------------------------------------


@attrs.frozen
class SessionCreated:
    session_id: str | None


@attrs.frozen
class SessionUpdated:
    """The service applied a `session.update` (the settings it echoes are not needed)."""


@attrs.frozen
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@attrs.frozen
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@attrs.frozen
class TimeoutTriggered:
    item_id: str
    audio_start_ms: int
    audio_end_ms: int


@attrs.frozen
class ResponseCreated:
    response_id: str


@attrs.frozen
class OutputItemAdded:
    response_id: str
    item_id: str
    item_type: str


@attrs.frozen
class AudioDelta:
    response_id: str
    item_id: str
    delta_b64: str
    n_bytes: int


@attrs.frozen
class AudioDone:
    response_id: str
    item_id: str


@attrs.frozen
class TranscriptDelta:
    response_id: str
    item_id: str
    delta: str


@attrs.frozen
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@attrs.frozen
class InputTranscript:
    item_id: str
    transcript: str
    usage: dict[str, Any] | None = None  # what the transcription is billed on (tokens or seconds)


@attrs.frozen
class FunctionCall:
    """`response.function_call_arguments.done`: the model wants a tool run."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@attrs.frozen
class OutputItemDone:
    response_id: str
    item_id: str
    item_type: str
    status: str | None


@attrs.frozen
class ResponseDone:
    response_id: str
    status: str
    reason: str | None
    usage: dict[str, Any] | None


@attrs.frozen
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@attrs.frozen
class RealtimeError:
    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None


@attrs.frozen
class OtherServerEvent:
    """A server event the bridge does not act on (or a type newer than this code)."""

    type: str


ServerEvent = Union[
    SessionCreated, SessionUpdated, SpeechStarted, SpeechStopped, TimeoutTriggered, ResponseCreated,
    OutputItemAdded, AudioDelta, AudioDone, TranscriptDelta, TranscriptDone, InputTranscript,
    FunctionCall, OutputItemDone, ResponseDone, ItemTruncated, RealtimeError, OtherServerEvent,
]


def parse_server(text: str | bytes) -> ServerEvent:
    """Parse one frame the Realtime service sent; raise ProtocolError for anything malformed."""
    msg = loads(SOURCE, text, MAX_SERVER_FRAME_CHARS)
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(SOURCE, "event has no string 'type' field")
    parse = _SERVER_PARSERS.get(kind)
    if parse is None:
        return OtherServerEvent(kind)
    event: ServerEvent = parse(Fields(SOURCE, kind), msg)
    return event


def _audio_delta(f: Fields, m: dict[str, Any]) -> AudioDelta:
    delta = f.str(m, "delta")
    return AudioDelta(f.str(m, "response_id"), f.str(m, "item_id"), delta, b64_len(SOURCE, "delta", delta))


def _response_done(f: Fields, m: dict[str, Any]) -> ResponseDone:
    r = f.obj(m, "response")
    details: dict[str, Any] = r["status_details"] if isinstance(r.get("status_details"), dict) else {}
    usage = r.get("usage") if isinstance(r.get("usage"), dict) else None
    reason = f.opt_str(details, "reason", "response.status_details.")
    return ResponseDone(f.str(r, "id", "response."), f.str(r, "status", "response."), reason, usage)


def _output_item(f: Fields, m: dict[str, Any], cls: type) -> Any:
    item = f.obj(m, "item")
    return cls(f.str(m, "response_id"), f.str(item, "id", "item."), f.str(item, "type", "item."),
               *((f.opt_str(item, "status", "item."),) if cls is OutputItemDone else ()))


def _error(f: Fields, m: dict[str, Any]) -> RealtimeError:
    e = f.obj(m, "error")
    return RealtimeError(
        type=f.str(e, "type", "error."), code=f.opt_str(e, "code", "error."),
        message=f.opt_str(e, "message", "error.") or "", param=f.opt_str(e, "param", "error."),
        event_id=f.opt_str(e, "event_id", "error."),
    )


_SERVER_PARSERS: dict[str, Any] = {
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": lambda f, m: AudioDone(f.str(m, "response_id"), f.str(m, "item_id")),
    "input_audio_buffer.speech_started": lambda f, m: SpeechStarted(f.str(m, "item_id"), f.int(m, "audio_start_ms")),
    "input_audio_buffer.speech_stopped": lambda f, m: SpeechStopped(f.str(m, "item_id"), f.int(m, "audio_end_ms")),
    "input_audio_buffer.timeout_triggered": lambda f, m: TimeoutTriggered(
        f.str(m, "item_id"), f.int(m, "audio_start_ms"), f.int(m, "audio_end_ms")),
    "response.created": lambda f, m: ResponseCreated(f.str(f.obj(m, "response"), "id", "response.")),
    "response.done": _response_done,
    "response.output_item.added": lambda f, m: _output_item(f, m, OutputItemAdded),
    "response.output_item.done": lambda f, m: _output_item(f, m, OutputItemDone),
    "response.output_audio_transcript.delta": lambda f, m: TranscriptDelta(
        f.str(m, "response_id"), f.str(m, "item_id"), f.str(m, "delta")),
    "response.output_audio_transcript.done": lambda f, m: TranscriptDone(
        f.str(m, "response_id"), f.str(m, "item_id"), f.str(m, "transcript")),
    "conversation.item.input_audio_transcription.completed": lambda f, m: InputTranscript(
        f.str(m, "item_id"), f.str(m, "transcript"), m["usage"] if isinstance(m.get("usage"), dict) else None),
    "response.function_call_arguments.done": lambda f, m: FunctionCall(
        f.str(m, "response_id"), f.str(m, "item_id"), f.str(m, "call_id"), f.str(m, "name"), f.str(m, "arguments")),
    "conversation.item.truncated": lambda f, m: ItemTruncated(f.str(m, "item_id"), f.int(m, "audio_end_ms")),
    "session.created": lambda f, m: SessionCreated(f.opt_str(f.obj(m, "session"), "id", "session.")),
    "session.updated": lambda f, m: (f.obj(m, "session"), SessionUpdated())[1],
    "error": _error,
}

# Errors that are part of normal life on a phone line: logged and counted, never fatal.
HARMLESS_ERROR_CODES = frozenset({
    "response_cancel_not_active",
    "conversation_already_has_active_response",
    "item_truncate_invalid_item_id",
    "input_audio_buffer_commit_empty",
})


# -- the server's side: parsing client events strictly (local Realtime peer) -------------------


class ClientEventError(ProtocolError):
    """A client event the real service would answer with an `error` event."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 event_id: str | None = None) -> None:
        super().__init__("realtime-client", message)
        self.code = code
        self.param = param
        self.event_id = event_id
        self.plain_message = message


@attrs.frozen
class SessionUpdate:
    session: dict[str, Any]
    event_id: str | None = None


@attrs.frozen
class AppendAudio:
    audio_b64: str
    n_bytes: int
    event_id: str | None = None


@attrs.frozen
class CommitBuffer:
    event_id: str | None = None


@attrs.frozen
class ClearBuffer:
    event_id: str | None = None


@attrs.frozen
class ItemCreate:
    item: dict[str, Any]
    previous_item_id: str | None = None
    event_id: str | None = None


@attrs.frozen
class ItemTruncate:
    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str | None = None


@attrs.frozen
class ItemDelete:
    item_id: str
    event_id: str | None = None


@attrs.frozen
class ItemRetrieve:
    item_id: str
    event_id: str | None = None


@attrs.frozen
class ResponseCreate:
    response: dict[str, Any]
    event_id: str | None = None


@attrs.frozen
class ResponseCancel:
    response_id: str | None = None
    event_id: str | None = None


ClientEvent = Union[SessionUpdate, AppendAudio, CommitBuffer, ClearBuffer, ItemCreate, ItemTruncate,
                    ItemDelete, ItemRetrieve, ResponseCreate, ResponseCancel]

_CLIENT_KEYS: dict[str, frozenset[str]] = {
    "session.update": frozenset({"session"}),
    "input_audio_buffer.append": frozenset({"audio"}),
    "input_audio_buffer.commit": frozenset(),
    "input_audio_buffer.clear": frozenset(),
    "conversation.item.create": frozenset({"item", "previous_item_id"}),
    "conversation.item.truncate": frozenset({"item_id", "content_index", "audio_end_ms"}),
    "conversation.item.delete": frozenset({"item_id"}),
    "conversation.item.retrieve": frozenset({"item_id"}),
    "response.create": frozenset({"response"}),
    "response.cancel": frozenset({"response_id"}),
}
_SESSION_KEYS = frozenset({"type", "model", "output_modalities", "instructions", "audio", "tools", "tool_choice",
                           "max_output_tokens", "truncation", "prompt", "tracing", "include"})
_AUDIO_IN_KEYS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
_AUDIO_OUT_KEYS = frozenset({"format", "voice", "speed"})
_VAD_KEYS = frozenset({"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                       "interrupt_response", "idle_timeout_ms", "eagerness"})
_RESPONSE_KEYS = frozenset({"instructions", "tools", "tool_choice", "output_modalities", "audio", "conversation",
                            "input", "metadata", "max_output_tokens", "prompt"})
_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output"})


def parse_client(text: str | bytes) -> ClientEvent:
    """Parse a client event as strictly as the service; raise ClientEventError otherwise."""
    try:
        msg = loads("realtime-client", text, MAX_CLIENT_FRAME_CHARS)
    except ProtocolError as exc:
        raise ClientEventError(str(exc).removeprefix(f"{exc.source}: "), code="invalid_json") from None
    event_id = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
    if msg.get("event_id") is not None and event_id is None:
        raise ClientEventError("Invalid type for 'event_id': expected a string.", code="invalid_type",
                               param="event_id")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ClientEventError("Missing required parameter: 'type'.", code="missing_required_parameter",
                               param="type", event_id=event_id)
    allowed = _CLIENT_KEYS.get(kind)
    if allowed is None:
        raise ClientEventError(f"Invalid value: '{kind[:60]}'. Supported values are: "
                               + ", ".join(f"'{k}'" for k in _CLIENT_KEYS) + ".",
                               code="invalid_value", param="type", event_id=event_id)
    _no_unknown(msg, allowed | {"type", "event_id"}, "", event_id)
    f = _ClientFields(kind, event_id)
    if kind == "input_audio_buffer.append":
        audio = f.str(msg, "audio")
        try:
            n = b64_len("realtime-client", "audio", audio)
        except ProtocolError:
            raise ClientEventError("Invalid 'audio'. Expected base64-encoded audio bytes.",
                                   code="invalid_value", param="audio", event_id=event_id) from None
        return AppendAudio(audio, n, event_id)
    if kind == "session.update":
        session = f.obj(msg, "session")
        _check_session(session, event_id)
        return SessionUpdate(session, event_id)
    if kind == "response.create":
        response = msg.get("response")
        response = {} if response is None else response
        if not isinstance(response, dict):
            raise ClientEventError("Invalid type for 'response': expected an object.", param="response",
                                   code="invalid_type", event_id=event_id)
        _no_unknown(response, _RESPONSE_KEYS, "response.", event_id)
        return ResponseCreate(response, event_id)
    if kind == "response.cancel":
        return ResponseCancel(f.opt_str(msg, "response_id"), event_id)
    if kind == "conversation.item.truncate":
        end = f.int(msg, "audio_end_ms")
        index = f.int(msg, "content_index")
        for name, value in (("audio_end_ms", end), ("content_index", index)):
            if value < 0:
                raise ClientEventError(f"Invalid '{name}': expected a value >= 0.", param=name, event_id=event_id)
        return ItemTruncate(f.str(msg, "item_id"), index, end, event_id)
    if kind == "conversation.item.create":
        item = f.obj(msg, "item")
        if not isinstance(item.get("type"), str):
            raise ClientEventError("Invalid type for 'item.type': expected a string.", code="invalid_type",
                                   param="item.type", event_id=event_id)
        if item["type"] not in _ITEM_TYPES:
            raise ClientEventError("Invalid value for 'item.type'.", param="item.type", event_id=event_id)
        if item["type"] == "function_call_output":
            _no_unknown(item, frozenset({"type", "id", "call_id", "output"}), "item.", event_id)
            f.str(item, "call_id", "item.")
            f.str(item, "output", "item.")
        elif item["type"] == "message":
            _no_unknown(item, frozenset({"type", "id", "role", "content", "status", "object"}), "item.", event_id)
            if item.get("role") not in ("user", "system", "assistant"):
                raise ClientEventError("Invalid value for 'item.role'.", param="item.role", event_id=event_id)
            content = item.get("content")
            if not isinstance(content, list) or not content:
                raise ClientEventError("Missing required parameter: 'item.content'.",
                                       code="missing_required_parameter", param="item.content", event_id=event_id)
            want = "output_text" if item["role"] == "assistant" else "input_text"
            for i, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in (want, "input_audio", "output_audio"):
                    raise ClientEventError(f"Invalid value for 'item.content[{i}].type'.",
                                           param=f"item.content[{i}].type", event_id=event_id)
        prev = f.opt_str(msg, "previous_item_id")
        return ItemCreate(item, prev, event_id)
    if kind == "conversation.item.delete":
        return ItemDelete(f.str(msg, "item_id"), event_id)
    if kind == "conversation.item.retrieve":
        return ItemRetrieve(f.str(msg, "item_id"), event_id)
    if kind == "input_audio_buffer.commit":
        return CommitBuffer(event_id)
    return ClearBuffer(event_id)


class _ClientFields(Fields):
    __slots__ = ("event_id",)

    def __init__(self, kind: str, event_id: str | None) -> None:
        super().__init__("realtime-client", kind)
        self.event_id = event_id

    def _get(self, parent: dict[str, Any], key: str, path: str) -> Any:
        if key not in parent:
            raise ClientEventError(f"Missing required parameter: '{path + key}'.",
                                   code="missing_required_parameter", param=path + key, event_id=self.event_id)
        return parent[key]

    def _type(self, path: str, expected: str, value: Any) -> ProtocolError:
        return ClientEventError(f"Invalid type for '{path}': expected {expected}, but got {type(value).__name__}.",
                                code="invalid_type", param=path, event_id=self.event_id)


def _no_unknown(obj: dict[str, Any], allowed: Iterable[str], path: str, event_id: str | None) -> None:
    allowed = frozenset(allowed)
    for key in obj:
        if key not in allowed:
            raise ClientEventError(f"Unknown parameter: '{path}{key}'.", code="unknown_parameter",
                                   param=f"{path}{key}", event_id=event_id)


def _opt_obj(parent: dict[str, Any], key: str, path: str, event_id: str | None) -> dict[str, Any]:
    """An optional nested object: absent or null reads as empty, anything but an object is rejected."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientEventError(f"Invalid type for '{path}{key}': expected an object, but got {type(value).__name__}.",
                               code="invalid_type", param=f"{path}{key}", event_id=event_id)
    return value


def _check_session(session: dict[str, Any], event_id: str | None) -> None:
    if session.get("type") is None:
        raise ClientEventError("Missing required parameter: 'session.type'.", code="missing_required_parameter",
                               param="session.type", event_id=event_id)
    if session["type"] not in ("realtime", "transcription"):
        raise ClientEventError("Invalid value for 'session.type': supported values are 'realtime' and "
                               "'transcription'.", param="session.type", event_id=event_id)
    _no_unknown(session, _SESSION_KEYS, "session.", event_id)
    audio = _opt_obj(session, "audio", "session.", event_id)
    _no_unknown(audio, {"input", "output"}, "session.audio.", event_id)
    audio_in = _opt_obj(audio, "input", "session.audio.", event_id)
    audio_out = _opt_obj(audio, "output", "session.audio.", event_id)
    _no_unknown(audio_in, _AUDIO_IN_KEYS, "session.audio.input.", event_id)
    _no_unknown(audio_out, _AUDIO_OUT_KEYS, "session.audio.output.", event_id)
    for where, fmt in (("input", audio_in.get("format")), ("output", audio_out.get("format"))):
        if fmt is not None and fmt not in AUDIO_FORMATS.values() and fmt != {"type": "audio/pcma"}:
            raise ClientEventError(f"Invalid value for 'session.audio.{where}.format'.",
                                   param=f"session.audio.{where}.format", event_id=event_id)
    vad = _opt_obj(audio_in, "turn_detection", "session.audio.input.", event_id)
    _no_unknown(vad, _VAD_KEYS, "session.audio.input.turn_detection.", event_id)
    modalities = session.get("output_modalities")
    if modalities is not None and modalities not in (["audio"], ["text"]):
        raise ClientEventError("Invalid value for 'session.output_modalities'.",
                               param="session.output_modalities", event_id=event_id)
