"""Twilio Media Streams, sans I/O: the frames of protocols.md section 3 in and out, and every way they can be bad."""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

import pytest

from voicebridge.edges.protocol import twilio_media as tw
from voicebridge.edges.protocol.errors import ProtocolError
from voicebridge.edges.protocol.twilio_media import (
    MAX_FRAME_CHARS,
    Connected,
    Dtmf,
    MarkEcho,
    Media,
    OutClear,
    OutMark,
    OutMedia,
    Start,
    Stop,
    UnknownTwilioEvent,
    parse_bridge,
    parse_twilio,
)

STREAM = "MZ" + "0123456789abcdef" * 2
CALL = "CA" + "fedcba9876543210" * 2
ACCOUNT = "AC" + "00112233445566778899aabbccddeeff"
SILENCE_20MS = b"\xff" * 160  # µ-law silence, one 20 ms frame
SILENCE_B64 = base64.b64encode(SILENCE_20MS).decode()
# Looks like base64 audio but is not valid base64: must never show up in an error message.
MARKER = "CALLERAUDIOzzzz"

# The inbound shapes of protocols.md section 3, verbatim apart from the ids.
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {"event": "start", "sequenceNumber": "1", "streamSid": STREAM,
         "start": {"accountSid": ACCOUNT, "streamSid": STREAM, "callSid": CALL, "tracks": ["inbound"],
                   "customParameters": {"k": "v"},
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
MEDIA = {"event": "media", "sequenceNumber": "3", "streamSid": STREAM,
         "media": {"track": "inbound", "chunk": "2", "timestamp": "40", "payload": SILENCE_B64}}
DTMF = {"event": "dtmf", "sequenceNumber": "5", "streamSid": STREAM, "dtmf": {"track": "inbound_track", "digit": "1"}}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "my label"}}
STOP = {"event": "stop", "sequenceNumber": "5", "streamSid": STREAM, "stop": {"accountSid": ACCOUNT, "callSid": CALL}}


def frame(base: dict[str, Any], *path_and_value: Any, drop: str | None = None) -> str:
    """`base` as JSON text, with one nested field replaced (path..., value) or dropped (drop="a.b")."""
    msg = json.loads(json.dumps(base))
    if path_and_value:
        *path, value = path_and_value
        target = msg
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    if drop:
        *path, last = drop.split(".")
        target = msg
        for key in path:
            target = target[key]
        del target[last]
    return json.dumps(msg)


# -- parsing what Twilio sends -----------------------------------------------------------------


def test_connected_parses_protocol_and_version() -> None:
    """The first frame, `connected`, gives its protocol and version."""
    assert parse_twilio(json.dumps(CONNECTED)) == Connected("Call", "1.0.0")


def test_start_parses_ids_parameters_format_and_sequence() -> None:
    """`start` gives the stream, call and account ids, custom parameters, tracks, format and counter as int."""
    params = {"callerNumber": "+15551230000", "token": "t-123"}
    event = parse_twilio(frame(START, "start", "customParameters", params))
    assert event == Start(stream_sid=STREAM, call_sid=CALL, account_sid=ACCOUNT, custom_parameters=params,
                          tracks=("inbound",), encoding="audio/x-mulaw", sample_rate=8000, sequence=1)


def test_start_takes_the_stream_sid_from_inside_start_when_the_top_level_one_is_absent() -> None:
    """A `start` without a top-level streamSid still yields the one inside `start`."""
    event = parse_twilio(frame(START, drop="streamSid"))
    assert isinstance(event, Start) and event.stream_sid == STREAM


@pytest.mark.parametrize("sid", ['MZ"1', "MZ\\1", "MZ\n1", ""])
def test_start_with_a_stream_sid_that_needs_escaping_is_refused(sid: str) -> None:
    """The SID goes into hand-built `media` frames: one that would break their JSON is refused up front."""
    msg = copy.deepcopy(START)
    msg["streamSid"] = msg["start"]["streamSid"] = sid
    with pytest.raises(ProtocolError, match="streamSid"):
        parse_twilio(json.dumps(msg))


def test_media_frames_for_a_valid_sid_are_valid_json() -> None:
    """What the bridge sends parses back to the same SID and payload."""
    sent = json.loads(tw.media(STREAM, "//7+"))
    assert sent == {"event": "media", "streamSid": STREAM, "media": {"payload": "//7+"}}


def test_start_without_custom_parameters_gives_an_empty_dict() -> None:
    """No `customParameters` reads as no parameters."""
    event = parse_twilio(frame(START, drop="start.customParameters"))
    assert isinstance(event, Start) and event.custom_parameters == {}


def test_media_parses_counters_as_ints_and_counts_payload_bytes() -> None:
    """`media` turns the string counters into ints and reports the decoded byte count (8 bytes = 1 ms)."""
    event = parse_twilio(json.dumps(MEDIA))
    assert event == Media(stream_sid=STREAM, track="inbound", chunk=2, timestamp_ms=40,
                          payload_b64=SILENCE_B64, n_bytes=160)
    assert event.payload == SILENCE_20MS
    assert event.n_bytes / 8 == 20


def test_media_accepts_counters_sent_as_numbers_and_a_missing_chunk() -> None:
    """Counters as JSON numbers are accepted, and a missing chunk reads as 0."""
    msg = json.loads(json.dumps(MEDIA))
    msg["media"]["timestamp"] = 60
    del msg["media"]["chunk"]
    event = parse_twilio(json.dumps(msg))
    assert isinstance(event, Media) and (event.timestamp_ms, event.chunk) == (60, 0)


@pytest.mark.parametrize("n_bytes", [0, 1, 2, 3, 159, 160, 161, 800])
def test_media_byte_count_matches_the_decoded_payload(n_bytes: int) -> None:
    """`n_bytes` is the decoded length for every padding case, including an empty payload."""
    audio = bytes(i % 256 for i in range(n_bytes))
    event = parse_twilio(frame(MEDIA, "media", "payload", base64.b64encode(audio).decode()))
    assert isinstance(event, Media) and event.n_bytes == n_bytes and event.payload == audio


def test_dtmf_parses_the_digit() -> None:
    """`dtmf` gives the digit pressed."""
    assert parse_twilio(json.dumps(DTMF)) == Dtmf(STREAM, "1")


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_every_dtmf_key_is_accepted(digit: str) -> None:
    """All sixteen DTMF keys parse."""
    assert parse_twilio(frame(DTMF, "dtmf", "digit", digit)) == Dtmf(STREAM, digit)


def test_mark_echo_parses_the_name() -> None:
    """A `mark` from Twilio is the echo of the name the bridge sent."""
    assert parse_twilio(json.dumps(MARK)) == MarkEcho(STREAM, "my label")


def test_stop_parses_the_call_sid() -> None:
    """`stop` gives the stream and the call it ends."""
    assert parse_twilio(json.dumps(STOP)) == Stop(STREAM, CALL)


def test_stop_without_a_stop_object_still_ends_the_stream() -> None:
    """A bare `stop` is still a stop, with no call sid."""
    assert parse_twilio(json.dumps({"event": "stop", "streamSid": STREAM})) == Stop(STREAM, None)


def test_unknown_event_is_passed_through_not_an_error() -> None:
    """An event type this version does not know comes back as UnknownTwilioEvent."""
    assert parse_twilio(json.dumps({"event": "transcription", "streamSid": STREAM, "x": {}})) == \
        UnknownTwilioEvent("transcription")


def test_frames_arriving_as_bytes_parse_like_text() -> None:
    """A binary WebSocket message with the same JSON parses the same."""
    assert parse_twilio(json.dumps(MEDIA).encode()) == parse_twilio(json.dumps(MEDIA))


def test_a_frame_of_exactly_the_limit_parses() -> None:
    """A frame of MAX_FRAME_CHARS characters (padded with JSON whitespace) is accepted."""
    text = json.dumps(MEDIA)
    text += " " * (MAX_FRAME_CHARS - len(text))
    assert len(text) == MAX_FRAME_CHARS
    assert isinstance(parse_twilio(text), Media)


# -- malformed input: a clear ProtocolError, never the payload --------------------------------

BAD_FRAMES: list[tuple[str, str, str]] = [
    ("not-json", '{"event":"media","streamSid":"' + MARKER, "not JSON"),
    ("not-json-empty", "", "not JSON"),
    ("json-list", json.dumps(["media", MARKER]), "expected a JSON object, got list"),
    ("json-string", json.dumps(MARKER), "expected a JSON object, got str"),
    ("json-number", "42", "expected a JSON object, got int"),
    ("missing-event", json.dumps({"streamSid": STREAM, "media": {"payload": MARKER}}), "no string 'event' field"),
    ("event-not-string", json.dumps({"event": 7, "streamSid": STREAM}), "no string 'event' field"),
    ("media-missing-streamSid", frame(MEDIA, drop="streamSid"), "media: missing field 'streamSid'"),
    ("media-missing-payload", frame(MEDIA, drop="media.payload"), "media: missing field 'media.payload'"),
    ("media-missing-timestamp", frame(MEDIA, drop="media.timestamp"), "media: missing field 'media.timestamp'"),
    ("mark-missing-name", frame(MARK, drop="mark.name"), "mark: missing field 'mark.name'"),
    ("mark-missing-mark", frame(MARK, drop="mark"), "mark: missing field 'mark'"),
    ("start-missing-callSid", frame(START, drop="start.callSid"), "start: missing field 'start.callSid'"),
    ("start-missing-both-streamSids", frame(json.loads(frame(START, drop="streamSid")),
                                            drop="start.streamSid"), "start: missing field 'start.streamSid'"),
    ("dtmf-missing-digit", frame(DTMF, drop="dtmf.digit"), "dtmf: missing field 'dtmf.digit'"),
    ("stop-missing-streamSid", frame(STOP, drop="streamSid"), "stop: missing field 'streamSid'"),
    ("streamSid-number", frame(MEDIA, "streamSid", 12345), "field 'streamSid' must be a string, got int"),
    ("mark-name-number", frame(MARK, "mark", "name", 7), "field 'mark.name' must be a string, got int"),
    ("callSid-number", frame(START, "start", "callSid", 1), "field 'start.callSid' must be a string, got int"),
    ("payload-number", frame(MEDIA, "media", "payload", 12), "field 'media.payload' must be a string, got int"),
    ("media-string", frame(MEDIA, "media", MARKER), "field 'media' must be an object, got str"),
    ("start-string", frame(START, "start", MARKER), "field 'start' must be an object, got str"),
    ("mark-string", frame(MARK, "mark", MARKER), "field 'mark' must be an object, got str"),
    ("dtmf-list", frame(DTMF, "dtmf", [MARKER]), "field 'dtmf' must be an object, got list"),
    ("timestamp-word", frame(MEDIA, "media", "timestamp", "forty"),
     "field 'media.timestamp' must be a non-negative integer (as a string), got str"),
    ("timestamp-negative", frame(MEDIA, "media", "timestamp", "-40"), "field 'media.timestamp' must be a non-negative"),
    ("timestamp-negative-number", frame(MEDIA, "media", "timestamp", -40),
     "field 'media.timestamp' must be a non-negative"),
    ("timestamp-bool", frame(MEDIA, "media", "timestamp", True), "field 'media.timestamp' must be a non-negative"),
    ("timestamp-float", frame(MEDIA, "media", "timestamp", 40.5), "got float"),
    ("timestamp-unicode-digit", frame(MEDIA, "media", "timestamp", "\u00b2"), "field 'media.timestamp' must be"),
    ("timestamp-5000-digits", frame(MEDIA, "media", "timestamp", "9" * 5000), "field 'media.timestamp' must be"),
    ("chunk-word", frame(MEDIA, "media", "chunk", "two"), "field 'media.chunk' must be"),
    ("sequence-word", frame(START, "sequenceNumber", "one"), "field 'sequenceNumber' must be"),
    ("payload-not-base64", frame(MEDIA, "media", "payload", MARKER + "!!"), "media.payload: not valid base64"),
    ("payload-bad-padding", frame(MEDIA, "media", "payload", MARKER[:13]), "media.payload: not valid base64"),
    ("payload-whitespace", frame(MEDIA, "media", "payload", "////\n////"), "media.payload: not valid base64"),
    ("payload-non-ascii", frame(MEDIA, "media", "payload", "////\u00e9///"), "media.payload: not valid base64"),
    ("oversize", json.dumps(MEDIA) + " " * MAX_FRAME_CHARS,
     f"exceeds the {MAX_FRAME_CHARS} limit"),
    ("oversize-by-one", json.dumps(MEDIA) + " " * (MAX_FRAME_CHARS + 1 - len(json.dumps(MEDIA))),
     f"frame of {MAX_FRAME_CHARS + 1} characters exceeds the {MAX_FRAME_CHARS} limit"),
    ("dtmf-letter", frame(DTMF, "dtmf", "digit", "E"), "dtmf: digit 'E' is not one of 0-9 * # A-D"),
    ("dtmf-two-digits", frame(DTMF, "dtmf", "digit", "12"), "is not one of 0-9 * # A-D"),
    ("dtmf-empty", frame(DTMF, "dtmf", "digit", ""), "is not one of 0-9 * # A-D"),
    ("dtmf-digit-number", frame(DTMF, "dtmf", "digit", 1), "field 'dtmf.digit' must be a string, got int"),
    ("custom-params-list", frame(START, "start", "customParameters", [MARKER]), "'start.customParameters' must be"),
    ("custom-params-number-value", frame(START, "start", "customParameters", {"k": 1}),
     "'start.customParameters' must map strings to strings"),
    ("custom-params-too-many", frame(START, "start", "customParameters", {f"k{i}": "v" for i in range(33)}),
     "'start.customParameters' must be an object of strings"),
    ("tracks-string", frame(START, "start", "tracks", "inbound"), "'start.tracks' must be a list of strings"),
    ("media-format-string", frame(START, "start", "mediaFormat", "mulaw"), "'start.mediaFormat' must be an object"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in BAD_FRAMES], ids=[i for i, _, _ in BAD_FRAMES])
def test_malformed_frame_raises_protocol_error_naming_the_problem(text: str, expected: str) -> None:
    """Each malformed frame raises ProtocolError from `twilio` whose message names the problem."""
    with pytest.raises(ProtocolError) as info:
        parse_twilio(text)
    assert info.value.source == "twilio"
    assert str(info.value).startswith("twilio: ")
    assert expected in str(info.value)


@pytest.mark.parametrize("text", [t for _, t, _ in BAD_FRAMES], ids=[i for i, _, _ in BAD_FRAMES])
def test_error_messages_never_echo_frame_content(text: str) -> None:
    """No error message repeats the payload or other content of the frame it rejects."""
    with pytest.raises(ProtocolError) as info:
        parse_twilio(text)
    message = str(info.value)
    assert MARKER not in message and MARKER[:8] not in message
    assert len(message) < 200


def test_the_custom_parameter_limit_is_inclusive() -> None:
    """Thirty-two custom parameters are accepted, thirty-three are not (see BAD_FRAMES)."""
    params = {f"k{i}": "v" for i in range(tw.MAX_CUSTOM_PARAMETERS)}
    event = parse_twilio(frame(START, "start", "customParameters", params))
    assert isinstance(event, Start) and event.custom_parameters == params


@pytest.mark.parametrize("rate", ["\u00b2", "9" * 5000, -1, True, "fast", None, 8000.0])
def test_unusable_sample_rate_reads_as_8000(rate: Any) -> None:
    """A start whose sampleRate is garbage still parses, with the only rate Twilio uses."""
    event = parse_twilio(frame(START, "start", "mediaFormat", "sampleRate", rate))
    assert isinstance(event, Start) and event.sample_rate == 8000


def test_random_corruptions_raise_only_protocol_error() -> None:
    """Thousands of seeded corruptions of valid frames either parse or raise ProtocolError, nothing else."""
    rnd = random.Random(20240611)
    seeds = [CONNECTED, START, MEDIA, DTMF, MARK, STOP]
    values: list[Any] = [None, 0, -1, 1.5, True, "", "x", "\u00b2", "9" * 5000, [], ["x"], {}, {"a": 1},
                         "AAA=", "!!", 2**70, MARKER]
    for _ in range(3000):
        msg = _corrupt(json.loads(json.dumps(rnd.choice(seeds))), rnd, values)
        try:
            parse_twilio(json.dumps(msg))
        except ProtocolError as exc:
            assert MARKER not in str(exc)


def _corrupt(obj: Any, rnd: random.Random, values: list[Any]) -> Any:
    for _ in range(rnd.randint(1, 3)):
        obj = _corrupt_once(obj, rnd, values)
    return obj


def _corrupt_once(obj: Any, rnd: random.Random, values: list[Any]) -> Any:
    if isinstance(obj, dict) and obj:
        key = rnd.choice(list(obj))
        roll = rnd.random()
        if roll < 0.2:
            del obj[key]
        elif roll < 0.6 and isinstance(obj[key], (dict, list)):
            obj[key] = _corrupt_once(obj[key], rnd, values)
        else:
            obj[key] = copy.deepcopy(rnd.choice(values))
        return obj
    if isinstance(obj, list) and obj:
        i = rnd.randrange(len(obj))
        nested = isinstance(obj[i], (dict, list))
        obj[i] = _corrupt_once(obj[i], rnd, values) if nested else copy.deepcopy(rnd.choice(values))
        return obj
    return copy.deepcopy(rnd.choice(values))


# -- what the bridge sends to Twilio -------------------------------------------------------------


def test_media_builder_matches_the_documented_shape() -> None:
    """`media` is exactly {"event":"media","streamSid":…,"media":{"payload":…}}, no sequenceNumber."""
    assert json.loads(tw.media(STREAM, SILENCE_B64)) == {
        "event": "media", "streamSid": STREAM, "media": {"payload": SILENCE_B64}}


def test_mark_builder_matches_the_documented_shape() -> None:
    """`mark` is exactly {"event":"mark","streamSid":…,"mark":{"name":…}}."""
    assert json.loads(tw.mark(STREAM, "item_1:20")) == {"event": "mark", "streamSid": STREAM,
                                                        "mark": {"name": "item_1:20"}}


def test_clear_builder_matches_the_documented_shape() -> None:
    """`clear` is exactly {"event":"clear","streamSid":…}."""
    assert json.loads(tw.clear(STREAM)) == {"event": "clear", "streamSid": STREAM}


def test_bridge_builders_round_trip_through_parse_bridge() -> None:
    """What the bridge builds, the Twilio side parses back to the same values."""
    assert parse_bridge(tw.media(STREAM, SILENCE_B64)) == OutMedia(STREAM, SILENCE_B64, 160)
    assert parse_bridge(tw.mark(STREAM, "item_1@1600#3")) == OutMark(STREAM, "item_1@1600#3")
    assert parse_bridge(tw.clear(STREAM)) == OutClear(STREAM)


def test_mark_names_needing_json_escapes_round_trip() -> None:
    """Mark names with quotes, backslashes and non-ASCII come back unchanged, both directions."""
    name = 'say "ciao" \\ caffè \u2603'
    assert parse_bridge(tw.mark(STREAM, name)) == OutMark(STREAM, name)
    assert parse_twilio(tw.mark_echo(STREAM, 9, name)) == MarkEcho(STREAM, name)


@pytest.mark.parametrize(("text", "expected"), [
    (tw.connected(), "unknown event 'connected'"),
    (json.dumps(START), "unknown event 'start'"),
    (json.dumps({"streamSid": STREAM}), "unknown event 'None'"),
    (frame(json.loads(tw.media(STREAM, SILENCE_B64)), "media", "payload", MARKER + "!"), "not valid base64"),
    (frame(json.loads(tw.media(STREAM, SILENCE_B64)), drop="streamSid"), "missing field 'streamSid'"),
    (frame(json.loads(tw.mark(STREAM, "n")), drop="mark.name"), "missing field 'mark.name'"),
    (json.dumps({"event": "clear"}), "missing field 'streamSid'"),
    ("[]", "expected a JSON object"),
])
def test_parse_bridge_rejects_what_twilio_would_reject(text: str, expected: str) -> None:
    """The Twilio side refuses frames the bridge must never send, with a clear message."""
    with pytest.raises(ProtocolError) as info:
        parse_bridge(text)
    assert expected in str(info.value) and MARKER not in str(info.value)


# -- what the local Twilio peer sends (caller side) -------------------------------------------


def test_caller_builders_produce_the_documented_shapes() -> None:
    """The caller-side builders produce exactly the inbound shapes of protocols.md section 3."""
    assert json.loads(tw.connected()) == CONNECTED
    assert json.loads(tw.start(STREAM, CALL, ACCOUNT, {"k": "v"})) == START
    assert json.loads(tw.caller_media(STREAM, 3, 2, 40, SILENCE_B64)) == MEDIA
    assert json.loads(tw.dtmf(STREAM, 5, "1")) == DTMF
    assert json.loads(tw.mark_echo(STREAM, 4, "my label")) == MARK
    assert json.loads(tw.stop(STREAM, 5, ACCOUNT, CALL)) == STOP


def test_caller_builders_round_trip_through_parse_twilio() -> None:
    """What the local Twilio peer builds, the bridge parses back to the same values."""
    params = {"callerNumber": "+15551230000", "note": 'quote " and caffè'}
    assert parse_twilio(tw.connected()) == Connected("Call", "1.0.0")
    assert parse_twilio(tw.start(STREAM, CALL, ACCOUNT, params, sequence=1)) == Start(
        STREAM, CALL, ACCOUNT, params, ("inbound",), "audio/x-mulaw", 8000, 1)
    assert parse_twilio(tw.caller_media(STREAM, 12, 11, 200, SILENCE_B64)) == Media(
        STREAM, "inbound", 11, 200, SILENCE_B64, 160)
    assert parse_twilio(tw.dtmf(STREAM, 20, "#")) == Dtmf(STREAM, "#")
    assert parse_twilio(tw.mark_echo(STREAM, 21, "item_1@160#1")) == MarkEcho(STREAM, "item_1@160#1")
    assert parse_twilio(tw.stop(STREAM, 22, ACCOUNT, CALL)) == Stop(STREAM, CALL)
