"""The one error type the protocol layers raise for input they cannot accept."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A peer sent a message we cannot understand (bad JSON, missing field, bad base64, too big).

    The message says what was wrong and never includes audio or secrets. The reader that
    called the parser logs and counts it, and the call goes on.
    """

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
