"""What the local Realtime server observed on each connection (`RealtimePeer.connections`)."""

from __future__ import annotations

from typing import Any

import attrs

def _setting(settings: dict[str, Any], key: str, default: float) -> Any:
    """A session setting the client may send as null: null (or absent) means the default."""
    value = settings.get(key)
    return default if value is None else value


@attrs.define
class VadEvent:
    """A VAD event as sent, with where it was detected (ms of input audio)."""

    time: float
    kind: str  # speech_started, speech_stopped, committed, timeout_triggered
    item_id: str
    audio_ms: int  # the position on the wire (audio_start_ms / audio_end_ms)
    detected_ms: int  # where speech really began/ended (no padding, no trailing silence)


@attrs.define
class CallLog:
    name: str
    call_id: str
    arguments: str  # the JSON string as sent


@attrs.define
class ResponseLog:
    id: str
    index: int  # 1-based, per connection
    trigger: str  # purpose, caller, tool_output, fallback, timeout
    purpose: str | None
    heard: str | None  # the caller clip recognised, for trigger == "caller"
    created_at: float
    says: list[str] = attrs.Factory(list)  # assistant clips spoken
    calls: list[CallLog] = attrs.Factory(list)
    items: list[str] = attrs.Factory(list)  # output item ids
    transcript: str | None = None
    audio_ms: float = 0.0  # audio generated (sent)
    first_audio_at: float | None = None  # when the first audio delta was sent
    status: str = "in_progress"
    reason: str | None = None
    done_at: float | None = None


@attrs.define
class TruncateLog:
    time: float
    item_id: str
    audio_end_ms: int
    generated_ms: int | None  # None when the item is unknown
    ok: bool


@attrs.define
class CancelLog:
    time: float
    response_id: str
    reason: str  # client_cancelled or turn_detected
    audio_ms: float  # audio generated when it stopped


@attrs.define
class ErrorLog:
    time: float
    type: str
    code: str | None
    message: str
    param: str | None
    client_event_id: str | None


@attrs.define
class Rejection:
    time: float
    status: int
    path: str


@attrs.define
class ConnLog:
    """Everything one connection did, for tests and the benchmark. No audio unless asked."""

    index: int
    model: str
    opened_at: float
    session_id: str
    header_names: list[str]
    client_events: list[tuple[float, str]] = attrs.Factory(list)  # (time, type) of every event received
    sent_events: list[tuple[float, str]] = attrs.Factory(list)  # (time, type) of every event sent
    audio_bytes_in: int = 0
    audio_ms_in: float = 0.0
    audio: bytearray | None = None  # the caller audio received, with record_audio=True
    vad: list[VadEvent] = attrs.Factory(list)
    transcripts: list[tuple[str, str | None, str]] = attrs.Factory(list)  # (item_id, clip, transcript)
    responses: list[ResponseLog] = attrs.Factory(list)
    truncates: list[TruncateLog] = attrs.Factory(list)
    cancels: list[CancelLog] = attrs.Factory(list)
    errors_sent: list[ErrorLog] = attrs.Factory(list)
    items_created: list[dict[str, Any]] = attrs.Factory(list)  # items the client created, as stored
    session_updates: list[dict[str, Any]] = attrs.Factory(list)  # `session` of each session.update
    faults: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    closed_at: float | None = None
    closed_by: str | None = None  # "server" or "client"
    close_code: int | None = None

    def types_sent(self) -> list[str]:
        return [t for _, t in self.sent_events]

    def types_received(self) -> list[str]:
        return [t for _, t in self.client_events]
