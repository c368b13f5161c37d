"""TwiML as the local Twilio reads it (voicebridge.peers.twiml), on documents built by Twilio's SDK."""

from __future__ import annotations

import pytest
from twilio.twiml.voice_response import Dial, VoiceResponse

from voicebridge.peers.twiml import (
    Connect,
    Dial as DialVerb,
    DialTarget,
    Hangup,
    Parameter,
    Pause,
    Play,
    Record,
    Redirect,
    Reject,
    Say,
    Stream,
    TwimlError,
    UnknownVerb,
    parse_twiml,
)


def test_connect_stream_with_parameters() -> None:
    """<Connect action><Stream url><Parameter/> becomes a Connect with its Stream and parameters."""
    vr = VoiceResponse()
    connect = vr.connect(action="https://voice.example.com/stream-ended")
    stream = connect.stream(url="wss://voice.example.com/media-stream", status_callback="https://voice.example.com/s")
    stream.parameter(name="token", value='a&b<c>"d')
    stream.parameter(name="callerNumber", value="+15551230000")
    doc = parse_twiml(str(vr))
    assert doc.problems == ()
    assert doc.verbs == (
        Connect(
            stream=Stream(
                url="wss://voice.example.com/media-stream",
                status_callback="https://voice.example.com/s",
                parameters=(Parameter("token", 'a&b<c>"d'), Parameter("callerNumber", "+15551230000")),
            ),
            action="https://voice.example.com/stream-ended",
        ),
    )
    assert doc.stream is not None
    assert doc.stream.custom_parameters == {"token": 'a&b<c>"d', "callerNumber": "+15551230000"}


def test_every_modelled_verb_in_document_order() -> None:
    """Say, Pause, Play, Redirect, Record, Dial, Reject and Hangup parse with Twilio's defaults."""
    vr = VoiceResponse()
    vr.say("Connecting you & goodbye", voice="Polly.Joanna", language="en-US")
    vr.pause(length=2)
    vr.play("https://cdn.example.com/beep.mp3", loop=2)
    vr.redirect("https://voice.example.com/next", method="GET")
    vr.record(action="/voicemail", max_length=30, finish_on_key="#", play_beep=False, transcribe=True)
    dial = Dial(caller_id="+15559870000", timeout=20)
    dial.number("+15551112222")
    vr.append(dial)
    vr.dial("+15553334444")
    vr.reject(reason="busy")
    vr.hangup()
    doc = parse_twiml(str(vr), strict=True)
    assert doc.verbs == (
        Say("Connecting you & goodbye", voice="Polly.Joanna", language="en-US"),
        Pause(2),
        Play("https://cdn.example.com/beep.mp3", loop=2),
        Redirect("https://voice.example.com/next", method="GET"),
        Record(action="/voicemail", max_length_s=30, finish_on_key="#", play_beep=False, transcribe=True),
        DialVerb((DialTarget("number", "+15551112222"),), caller_id="+15559870000", timeout_s=20),
        DialVerb((DialTarget("number", "+15553334444"),)),
        Reject("busy"),
        Hangup(),
    )
    first_dial = doc.first(DialVerb)
    assert first_dial is not None and first_dial.number == "+15551112222"
    assert doc.of_type(Hangup) == (Hangup(),)
    assert doc.stream is None


def test_defaults_match_twilio() -> None:
    """Attributes left out take Twilio's documented defaults."""
    vr = VoiceResponse()
    vr.pause()
    vr.record()
    vr.dial("+15550001111")
    vr.say("Hi")
    vr.connect().stream(url="wss://h.example.com/media-stream")
    pause, record, dial, say, connect = parse_twiml(str(vr)).verbs
    assert pause == Pause(1)
    assert record == Record(timeout_s=5, max_length_s=3600, finish_on_key="1234567890*#", play_beep=True)
    assert isinstance(dial, DialVerb) and (dial.timeout_s, dial.time_limit_s, dial.method) == (30, 14400, "POST")
    assert say == Say("Hi", loop=1)
    assert isinstance(connect, Connect) and connect.action is None and connect.method == "POST"


def test_unknown_verbs_are_kept_and_reported() -> None:
    """A verb Twilio does not have, or one this peer does not run, is an UnknownVerb plus a problem."""
    xml = '<Response><Gather numDigits="1"><Say>Press 1</Say></Gather><Speak>hi</Speak><Hangup/></Response>'
    doc = parse_twiml(xml)
    assert doc.verbs == (UnknownVerb("Gather", (("numDigits", "1"),), "Press 1"), UnknownVerb("Speak", (), "hi"), Hangup())
    assert doc.problems == (
        "<Gather> is a Twilio verb this local peer does not support",
        "<Speak> is not a TwiML voice verb",
    )
    with pytest.raises(TwimlError, match="Speak"):
        parse_twiml(xml, strict=True)
    with pytest.raises(TwimlError, match="Speak"):
        doc.check()


def test_schema_problems_are_reported() -> None:
    """Unknown attributes, bad values, stray text and Stream misuse are each named."""
    xml = (
        "<Response>stray"
        '<Connect method="PUT"><Stream track="inbound_track" bogus="1">'
        f'<Parameter name="big" value="{"x" * 501}"/><Parameter value="no-name"/></Stream><Stream url="wss://b"/></Connect>'
        '<Pause length="soon"/><Hangup>now</Hangup><Record playBeep="maybe"/>'
        "</Response>"
    )
    doc = parse_twiml(xml)
    text = "\n".join(doc.problems)
    for expected in (
        "<Response>: unexpected text 'stray'",
        "<Connect>: method must be GET or POST",
        "<Stream>: unknown attribute 'bogus'",
        "<Stream>: url is required",
        "<Stream>: track is for unidirectional",
        "value exceeds 500 characters",
        "<Parameter>: name is required",
        "only one <Stream> per <Connect>",
        "<Pause>: length must be a whole number",
        "<Hangup>: unexpected text 'now'",
        "<Record>: playBeep must be true or false",
    ):
        assert expected in text
    pause = doc.first(Pause)
    assert pause == Pause(1)  # a bad value falls back to the default, and is reported


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not well-formed"),
        ("<Response><Say>unclosed</Response>", "not well-formed"),
        ("<Resp><Hangup/></Resp>", "root element must be <Response>"),
        ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "b">]><Response/>', "DOCTYPE"),
        ("<Response>" + "<Pause/>" * 10000 + "</Response>", "exceeds"),
    ],
)
def test_documents_twilio_cannot_run_raise(text: str, message: str) -> None:
    """Not XML, a wrong root, a DOCTYPE or an oversized document raise TwimlError."""
    with pytest.raises(TwimlError, match=message):
        parse_twiml(text)


def test_say_with_ssml_keeps_the_spoken_text() -> None:
    """SSML inside <Say> is allowed; the text is what would be spoken."""
    vr = VoiceResponse()
    say = vr.say("Your total is")
    say.prosody("twenty dollars", rate="slow")
    say.break_(time="500ms")
    doc = parse_twiml(str(vr), strict=True)
    assert doc.verbs == (Say("Your total is twenty dollars"),)


def test_bytes_with_xml_declaration_parse() -> None:
    """The SDK's output, as bytes with its XML declaration, parses as the string does."""
    vr = VoiceResponse()
    vr.hangup()
    assert parse_twiml(str(vr).encode("utf-8")) == parse_twiml(str(vr))
