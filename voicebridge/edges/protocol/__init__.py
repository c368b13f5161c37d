"""Sans-I/O wire protocols: Twilio Media Streams and the OpenAI Realtime API (GA)."""

from voicebridge.edges.protocol.errors import ProtocolError

__all__ = ["ProtocolError"]
