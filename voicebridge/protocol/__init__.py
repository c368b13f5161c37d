"""Sans-I/O wire protocols: Twilio Media Streams and the OpenAI Realtime API (GA)."""

from .errors import ProtocolError

__all__ = ["ProtocolError"]
