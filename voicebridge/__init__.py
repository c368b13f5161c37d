"""voicebridge: a phone agent bridging Twilio Media Streams to the OpenAI Realtime API, on Trio."""

__version__ = "0.1.0"
