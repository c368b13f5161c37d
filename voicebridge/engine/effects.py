"""What the call's state machine asks the call's tasks to do. Plain data; the tasks perform it."""

from __future__ import annotations

from typing import Any, Union

import attrs


@attrs.frozen
class SendModel:
    """A client event (wire text) for the Realtime socket. Dropped if the socket is down."""

    text: str
    kind: str  # the event type, for logs


@attrs.frozen
class SendCaller:
    """A frame (wire text) for the Twilio socket."""

    text: str
    kind: str


@attrs.frozen
class Commit:
    """Commit the job's confirmed task with its outbox events, then fire `committed` (or `commit_failed`)."""

    call_id: str | None  # the confirming tool call to answer, or None (confirmed by DTMF)


@attrs.frozen
class ArmTimer:
    name: str
    seconds: float


@attrs.frozen
class DisarmTimer:
    name: str


@attrs.frozen
class Hangup:
    """End the media stream now (the last words have been heard, or cannot be)."""

    outcome: str


@attrs.frozen
class Rotate:
    """Replace the Realtime session with a fresh one (between answers, before its maximum age)."""


@attrs.frozen
class Transcript:
    role: str  # "caller" or "assistant"
    text: str
    item_id: str | None


@attrs.frozen
class Notice:
    """Something worth a log line, a metric and the demo's live view (never audio or secrets)."""

    kind: str
    fields: dict[str, Any] = attrs.field(factory=dict)


Effect = Union[SendModel, SendCaller, Commit, ArmTimer, DisarmTimer, Hangup, Rotate, Transcript, Notice]
