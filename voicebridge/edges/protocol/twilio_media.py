"""Twilio Media Streams, sans I/O: text frames <-> attrs events.

Two directions, two halves:
- the bridge's side: `parse_twilio` (Twilio -> bridge) and `media`/`mark`/`clear` (bridge -> Twilio);
- the caller's side, used by the local Twilio peer and the replayer: `parse_bridge` (bridge ->
  Twilio) and `connected`/`start`/`caller_media`/`dtmf`/`mark_echo`/`stop`.

Audio payloads stay base64 text (`payload_b64`): on the pass-through path the bridge never decodes
them, it only checks they are valid base64 and how many bytes they carry (µ-law: 8 bytes = 1 ms).
"""

from __future__ import annotations

from typing import Any, Union

import attrs

from voicebridge.edges.protocol._codec import Fields, b64_decode, b64_len, dumps, loads
from voicebridge.edges.protocol.errors import ProtocolError

SOURCE = "twilio"
MAX_FRAME_CHARS = 256 * 1024  # a 20 ms media frame is ~400 characters; marks are tiny
MAX_CUSTOM_PARAMETERS = 32


# -- Twilio -> bridge ------------------------------------------------------------------------


@attrs.frozen
class Connected:
    protocol: str
    version: str


@attrs.frozen
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    tracks: tuple[str, ...] = ("inbound",)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    sequence: int = 1


@attrs.frozen
class Media:
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload_b64: str
    n_bytes: int  # decoded length; µ-law 8 kHz: n_bytes / 8 = ms

    @property
    def payload(self) -> bytes:
        return b64_decode(SOURCE, "media.payload", self.payload_b64)


@attrs.frozen
class Dtmf:
    stream_sid: str
    digit: str


@attrs.frozen
class MarkEcho:
    """Twilio's echo of a mark we sent (the audio before it was played, or a `clear` flushed it)."""

    stream_sid: str
    name: str


@attrs.frozen
class Stop:
    stream_sid: str
    call_sid: str | None


@attrs.frozen
class UnknownTwilioEvent:
    """An event type this version does not know: passed through, never an error."""

    event: str


TwilioEvent = Union[Connected, Start, Media, Dtmf, MarkEcho, Stop, UnknownTwilioEvent]

DTMF_DIGITS = frozenset("0123456789*#ABCD")


def parse_twilio(text: str | bytes) -> TwilioEvent:
    """Parse one frame Twilio sent; raise ProtocolError for anything malformed."""
    msg = loads(SOURCE, text, MAX_FRAME_CHARS)
    kind = msg.get("event")
    if not isinstance(kind, str):
        raise ProtocolError(SOURCE, "message has no string 'event' field")
    f = Fields(SOURCE, kind)
    if kind == "media":
        m = f.obj(msg, "media")
        payload = f.str(m, "payload", "media.")
        return Media(
            stream_sid=f.str(msg, "streamSid"),
            track=f.opt_str(m, "track", "media.") or "inbound",
            chunk=f.int_str(m, "chunk", "media.") if "chunk" in m else 0,
            timestamp_ms=f.int_str(m, "timestamp", "media."),
            payload_b64=payload,
            n_bytes=b64_len(SOURCE, "media.payload", payload),
        )
    if kind == "mark":
        return MarkEcho(f.str(msg, "streamSid"), f.str(f.obj(msg, "mark"), "name", "mark."))
    if kind == "start":
        s = f.obj(msg, "start")
        params = s.get("customParameters") or {}
        if not isinstance(params, dict) or len(params) > MAX_CUSTOM_PARAMETERS:
            raise ProtocolError(SOURCE, "start: 'start.customParameters' must be an object of strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
            raise ProtocolError(SOURCE, "start: 'start.customParameters' must map strings to strings")
        tracks = s.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise ProtocolError(SOURCE, "start: field 'start.tracks' must be a list of strings")
        fmt = s.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise ProtocolError(SOURCE, "start: field 'start.mediaFormat' must be an object")
        stream_sid = f.str(msg, "streamSid") if "streamSid" in msg else f.str(s, "streamSid", "start.")
        if not stream_sid or not stream_sid.isprintable() or '"' in stream_sid or "\\" in stream_sid:
            # `media` frames are built by hand with the SID inside: it must need no JSON escaping
            # (Twilio's are "MZ" and 32 hex digits).
            raise ProtocolError(SOURCE, "start: field 'streamSid' must be a non-empty SID without quotes, "
                                        "backslashes or control characters")
        return Start(
            stream_sid=stream_sid,
            call_sid=f.str(s, "callSid", "start."),
            account_sid=f.opt_str(s, "accountSid", "start.") or "",
            custom_parameters=dict(params),
            tracks=tuple(tracks),
            encoding=str(fmt.get("encoding", "audio/x-mulaw")),
            sample_rate=_sample_rate(fmt.get("sampleRate", 8000)),
            sequence=f.int_str(msg, "sequenceNumber") if "sequenceNumber" in msg else 1,
        )
    if kind == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    if kind == "dtmf":
        digit = f.str(f.obj(msg, "dtmf"), "digit", "dtmf.")
        if digit not in DTMF_DIGITS:
            raise ProtocolError(SOURCE, f"dtmf: digit {digit[:4]!r} is not one of 0-9 * # A-D")
        return Dtmf(f.str(msg, "streamSid"), digit)
    if kind == "stop":
        stop: dict[str, Any] = msg["stop"] if isinstance(msg.get("stop"), dict) else {}
        return Stop(f.str(msg, "streamSid"), f.opt_str(stop, "callSid", "stop."))
    return UnknownTwilioEvent(kind)


def _sample_rate(value: Any) -> int:
    """`mediaFormat.sampleRate` (always 8000 in practice); anything unusable reads as 8000."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        return int(value)
    return 8000


# -- bridge -> Twilio ------------------------------------------------------------------------


def media(stream_sid: str, payload_b64: str) -> str:
    """A `media` frame carrying µ-law audio (base64) to the caller."""
    # Built by hand: this is the hot path, and neither value needs JSON escaping (parse_twilio
    # refuses a stream SID with a quote, backslash or control character; base64 has none).
    return '{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"' + payload_b64 + '"}}'


def mark(stream_sid: str, name: str) -> str:
    return dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> str:
    return dumps({"event": "clear", "streamSid": stream_sid})


# -- the caller's side (local Twilio peer, replayer) ------------------------------------------


@attrs.frozen
class OutMedia:
    stream_sid: str
    payload_b64: str
    n_bytes: int


@attrs.frozen
class OutMark:
    stream_sid: str
    name: str


@attrs.frozen
class OutClear:
    stream_sid: str


BridgeEvent = Union[OutMedia, OutMark, OutClear]


def parse_bridge(text: str | bytes) -> BridgeEvent:
    """Parse a frame the bridge sent to Twilio, as Twilio would (strictly)."""
    msg = loads("bridge->twilio", text, MAX_FRAME_CHARS)
    kind = msg.get("event")
    f = Fields("bridge->twilio", str(kind))
    if kind == "media":
        payload = f.str(f.obj(msg, "media"), "payload", "media.")
        return OutMedia(f.str(msg, "streamSid"), payload, b64_len("bridge->twilio", "media.payload", payload))
    if kind == "mark":
        return OutMark(f.str(msg, "streamSid"), f.str(f.obj(msg, "mark"), "name", "mark."))
    if kind == "clear":
        return OutClear(f.str(msg, "streamSid"))
    raise ProtocolError("bridge->twilio", f"unknown event {str(kind)[:40]!r}")


def connected() -> str:
    return dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(
    stream_sid: str, call_sid: str, account_sid: str, custom_parameters: dict[str, str], sequence: int = 1
) -> str:
    return dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence),
            "streamSid": stream_sid,
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def caller_media(stream_sid: str, sequence: int, chunk: int, timestamp_ms: int, payload_b64: str) -> str:
    return (
        '{"event":"media","sequenceNumber":"%d","streamSid":"%s","media":{"track":"inbound","chunk":"%d",'
        '"timestamp":"%d","payload":"%s"}}' % (sequence, stream_sid, chunk, timestamp_ms, payload_b64)
    )


def dtmf(stream_sid: str, sequence: int, digit: str) -> str:
    return dumps(
        {"event": "dtmf", "sequenceNumber": str(sequence), "streamSid": stream_sid,
         "dtmf": {"track": "inbound_track", "digit": digit}}
    )


def mark_echo(stream_sid: str, sequence: int, name: str) -> str:
    return dumps({"event": "mark", "sequenceNumber": str(sequence), "streamSid": stream_sid, "mark": {"name": name}})


def stop(stream_sid: str, sequence: int, account_sid: str, call_sid: str) -> str:
    return dumps(
        {"event": "stop", "sequenceNumber": str(sequence), "streamSid": stream_sid,
         "stop": {"accountSid": account_sid, "callSid": call_sid}}
    )
