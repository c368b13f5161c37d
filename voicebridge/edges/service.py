"""What the web front needs of the daemon, as an interface: the edges import no daemon.

`voicebridge.daemon.Daemon` implements it; tests may hand the app anything that does.
"""

from __future__ import annotations

from typing import Any, Protocol

from voicebridge.config import Config
from voicebridge.edges.security import StreamTokens, TwilioSignatures
from voicebridge.edges.transport import MessageStream
from voicebridge.ops.metrics import Metrics


class Answering(Protocol):
    """One business, as the web front sees it: its slug and its settings (transfer number, ...)."""

    @property
    def slug(self) -> str: ...

    @property
    def config(self) -> Config: ...


class Directory(Protocol):
    """Which business answers a number (`voicebridge.business.Businesses`)."""

    @property
    def default(self) -> Any: ...

    def for_number(self, to: str | None) -> Any:
        """The business whose number `to` is (an `Answering`), or None: refuse the call."""
        ...


class CallService(Protocol):
    config: Config
    signatures: TwilioSignatures
    tokens: StreamTokens
    metrics: Metrics
    draining: bool

    @property
    def businesses(self) -> Directory:
        """The businesses this deployment answers for."""
        ...

    def prewarm(self, call_sid: str, business: Any = None) -> None:
        """Open the call's Realtime session while Twilio connects the stream."""
        ...

    async def handle_stream(self, twilio: MessageStream) -> Any:
        """Run one call on an accepted Media Streams socket until it ends."""
        ...

    async def outcome_of(self, call_sid: str) -> str | None:
        """How a call ended (waiting briefly while it finishes), or None if unknown."""
        ...

    async def voicemail_received(self, call_sid: str, *, url: str, duration_s: int | None,
                                 from_number: str | None, business: str = "default") -> bool:
        """Keep a caller's voicemail and notify the business once; False if it was already kept."""
        ...

    async def recording_received(self, recording_sid: str, call_sid: str, *, status: str, duration_s: int | None,
                                 channels: int | None) -> bool:
        """Keep a call recording's status callback and queue its download once; False if already kept."""
        ...

    async def not_ready_reason(self) -> str | None:
        """Why the daemon should not get new calls now, or None when it is ready."""
        ...
