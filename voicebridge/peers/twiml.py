"""Parse the TwiML a voice webhook returns, as the local Twilio peer reads it.

`parse_twiml(text)` turns a `<Response>` document into attrs verbs, in document order:
`Connect` (with its `Stream` and `Parameter`s), `Hangup`, `Dial`, `Say`, `Play`, `Pause`,
`Redirect`, `Record` (voicemail) and `Reject`. Attribute defaults are Twilio's.

Strictness: a document Twilio could not run at all (not XML, too large, a DOCTYPE, a root
other than `<Response>`) raises `TwimlError`. Everything else Twilio would flag with a
schema warning is collected in `TwimlResponse.problems`, one readable line each: unknown
verbs (kept in place as `UnknownVerb`), unknown attributes or children, bad attribute
values, stray text, a `<Stream>` without `url`, a `<Parameter>` value over 500 characters.
`parse_twiml(text, strict=True)` raises `TwimlError` listing them instead.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TypeVar, Union

import attrs

MAX_TWIML_BYTES = 64 * 1024  # Twilio's limit for a TwiML document
MAX_PARAMETER_VALUE_CHARS = 500  # <Parameter value> limit for Media Streams

T = TypeVar("T")


class TwimlError(ValueError):
    """The document is not TwiML Twilio could run (or, with `strict=True`, has problems)."""


# -- verbs ------------------------------------------------------------------------------------


@attrs.frozen
class Parameter:
    name: str
    value: str


@attrs.frozen
class Stream:
    """`<Connect><Stream>`: a bidirectional Media Stream to `url` (wss, no query string)."""

    url: str
    name: str | None = None
    track: str | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    parameters: tuple[Parameter, ...] = ()

    @property
    def custom_parameters(self) -> dict[str, str]:
        """What Twilio sends in `start.customParameters` (a later duplicate name wins)."""
        return {p.name: p.value for p in self.parameters}


@attrs.frozen
class Connect:
    """`<Connect>`: blocks until the stream ends; then Twilio requests `action`, if any."""

    stream: Stream | None
    action: str | None = None
    method: str = "POST"


@attrs.frozen
class Hangup:
    """`<Hangup/>`: end the call."""


@attrs.frozen
class DialTarget:
    """Who `<Dial>` calls: `kind` is `number` (also for bare text), `client`, `sip`, `conference`, ..."""

    kind: str
    value: str


@attrs.frozen
class Dial:
    targets: tuple[DialTarget, ...]
    action: str | None = None
    method: str = "POST"
    timeout_s: int = 30
    time_limit_s: int = 14400
    caller_id: str | None = None
    record: str | None = None

    @property
    def number(self) -> str | None:
        """The first phone number dialled, if any."""
        return next((t.value for t in self.targets if t.kind == "number"), None)


@attrs.frozen
class Say:
    text: str
    voice: str | None = None
    language: str | None = None
    loop: int = 1


@attrs.frozen
class Play:
    url: str | None
    loop: int = 1
    digits: str | None = None


@attrs.frozen
class Pause:
    length_s: int = 1


@attrs.frozen
class Redirect:
    url: str
    method: str = "POST"


@attrs.frozen
class Record:
    """`<Record>` (voicemail): records the caller, then requests `action`."""

    action: str | None = None
    method: str = "POST"
    timeout_s: int = 5
    max_length_s: int = 3600
    finish_on_key: str = "1234567890*#"
    play_beep: bool = True
    transcribe: bool = False
    trim: str = "trim-silence"
    recording_status_callback: str | None = None


@attrs.frozen
class Reject:
    reason: str = "rejected"


@attrs.frozen
class UnknownVerb:
    """A verb this parser does not model (also listed in `problems`)."""

    tag: str
    attributes: tuple[tuple[str, str], ...] = ()
    text: str = ""


Verb = Union[Connect, Hangup, Dial, Say, Play, Pause, Redirect, Record, Reject, UnknownVerb]


@attrs.frozen
class TwimlResponse:
    verbs: tuple[Verb, ...]
    problems: tuple[str, ...] = ()

    def of_type(self, kind: type[T]) -> tuple[T, ...]:
        """Every verb of one type, in document order."""
        return tuple(v for v in self.verbs if isinstance(v, kind))

    def first(self, kind: type[T]) -> T | None:
        found = self.of_type(kind)
        return found[0] if found else None

    @property
    def stream(self) -> Stream | None:
        """The first `<Connect><Stream>`, if any."""
        connect = self.first(Connect)
        return connect.stream if connect is not None else None

    def check(self) -> TwimlResponse:
        """Return self, or raise TwimlError listing the problems."""
        if self.problems:
            raise TwimlError("TwiML has problems: " + "; ".join(self.problems))
        return self


# -- parsing ----------------------------------------------------------------------------------

# Verbs Twilio knows that this parser does not model: reported as "not supported here".
OTHER_TWILIO_VERBS = frozenset(
    {"Gather", "Enqueue", "Leave", "Queue", "Start", "Stop", "Refer", "Pay", "Prompt", "Sms", "Echo"}
)
SSML_TAGS = frozenset(
    {"break", "emphasis", "lang", "p", "phoneme", "prosody", "s", "say-as", "sub", "w"}
)
_URL_ATTRS = {"action", "url", "statusCallback", "recordingStatusCallback", "transcribeCallback"}
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)

_ATTRS: dict[str, frozenset[str]] = {
    "Connect": frozenset({"action", "method"}),
    "Stream": frozenset(
        {"url", "name", "connectorName", "track", "statusCallback", "statusCallbackMethod"}
    ),
    "Parameter": frozenset({"name", "value"}),
    "Hangup": frozenset(),
    "Dial": frozenset(
        {"action", "method", "timeout", "hangupOnStar", "timeLimit", "callerId", "record", "trim",
         "recordingStatusCallback", "recordingConfigurationId", "recordingStatusCallbackMethod",
         "recordingStatusCallbackEvent", "answerOnBridge", "ringTone", "recordingTrack", "sequential",
         "referUrl", "referMethod", "events", "passports"}
    ),
    "Say": frozenset({"voice", "loop", "language"}),
    "Play": frozenset({"loop", "digits"}),
    "Pause": frozenset({"length"}),
    "Redirect": frozenset({"method"}),
    "Record": frozenset(
        {"action", "method", "timeout", "finishOnKey", "maxLength", "playBeep", "trim",
         "recordingStatusCallback", "recordingStatusCallbackMethod", "recordingStatusCallbackEvent",
         "transcribe", "transcribeCallback", "recordingConfigurationId"}
    ),
    "Reject": frozenset({"reason"}),
}
_DIAL_NOUNS: dict[str, tuple[str, str]] = {  # tag -> (kind, attribute holding the value if not text)
    "Number": ("number", ""),
    "Client": ("client", ""),
    "Sip": ("sip", ""),
    "Conference": ("conference", ""),
    "Queue": ("queue", ""),
    "Sim": ("sim", ""),
    "Application": ("application", ""),
    "WhatsApp": ("whatsapp", ""),
}


def parse_twiml(text: str | bytes, *, strict: bool = False) -> TwimlResponse:
    """Parse a TwiML voice document; raise TwimlError if Twilio could not run it at all."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_TWIML_BYTES:
        raise TwimlError(f"TwiML of {len(raw)} bytes exceeds Twilio's {MAX_TWIML_BYTES}-byte limit")
    if _DOCTYPE.search(raw):
        raise TwimlError("TwiML must not contain a DOCTYPE or ENTITY declaration")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise TwimlError(f"TwiML is not well-formed XML ({exc})") from None
    if root.tag != "Response":
        raise TwimlError(f"TwiML root element must be <Response>, got <{root.tag}>")
    p = _Parser()
    p.attributes(root, frozenset(), "Response")
    p.no_text(root.text, "Response")
    verbs: list[Verb] = []
    for el in root:
        verbs.append(p.verb(el))
        p.no_text(el.tail, "Response")
    result = TwimlResponse(tuple(verbs), tuple(p.problems))
    return result.check() if strict else result


class _Parser:
    def __init__(self) -> None:
        self.problems: list[str] = []

    # -- helpers

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def attributes(self, el: ET.Element, allowed: frozenset[str], where: str) -> None:
        for name in el.attrib:
            if name not in allowed:
                self.problem(f"<{where}>: unknown attribute {name!r}")

    def no_text(self, text: str | None, where: str) -> None:
        if text is not None and text.strip():
            self.problem(f"<{where}>: unexpected text {text.strip()[:40]!r}")

    def no_children(self, el: ET.Element, where: str) -> None:
        for child in el:
            self.problem(f"<{where}>: unexpected child <{child.tag}>")

    def text(self, el: ET.Element) -> str:
        return (el.text or "").strip()

    def method(self, el: ET.Element, name: str, where: str) -> str:
        value = el.get(name)
        if value is None:
            return "POST"
        if value.upper() not in ("GET", "POST"):
            self.problem(f"<{where}>: {name} must be GET or POST, got {value[:20]!r}")
            return "POST"
        return value.upper()

    def integer(self, el: ET.Element, name: str, default: int, where: str, *, minimum: int = 0) -> int:
        value = el.get(name)
        if value is None:
            return default
        if not value.strip().isdigit() or int(value) < minimum:
            self.problem(f"<{where}>: {name} must be a whole number >= {minimum}, got {value[:20]!r}")
            return default
        return int(value)

    def boolean(self, el: ET.Element, name: str, default: bool, where: str) -> bool:
        value = el.get(name)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            self.problem(f"<{where}>: {name} must be true or false, got {value[:20]!r}")
            return default
        return value.lower() == "true"

    def urls(self, el: ET.Element, where: str) -> None:
        for name in _URL_ATTRS & set(el.attrib):
            if not el.attrib[name].strip():
                self.problem(f"<{where}>: {name} is empty")

    # -- verbs

    def verb(self, el: ET.Element) -> Verb:
        tag = el.tag
        handler = getattr(self, f"v_{tag.lower()}", None) if tag in _ATTRS and tag not in ("Stream", "Parameter") else None
        if handler is None:
            if tag in OTHER_TWILIO_VERBS:
                self.problem(f"<{tag}> is a Twilio verb this local peer does not support")
            else:
                self.problem(f"<{tag}> is not a TwiML voice verb")
            return UnknownVerb(tag, tuple(sorted(el.attrib.items())), "".join(el.itertext()).strip())
        self.attributes(el, _ATTRS[tag], tag)
        self.urls(el, tag)
        verb: Verb = handler(el)
        return verb

    def v_connect(self, el: ET.Element) -> Connect:
        self.no_text(el.text, "Connect")
        stream: Stream | None = None
        for child in el:
            self.no_text(child.tail, "Connect")
            if child.tag == "Stream" and stream is None:
                stream = self.stream(child)
            elif child.tag == "Stream":
                self.problem("<Connect>: only one <Stream> per <Connect> (one bidirectional stream per call)")
            else:
                self.problem(f"<Connect>: <{child.tag}> is not supported here (only <Stream>)")
        if len(el) == 0:
            self.problem("<Connect>: needs a <Stream>")
        return Connect(stream=stream, action=el.get("action"), method=self.method(el, "method", "Connect"))

    def stream(self, el: ET.Element) -> Stream:
        self.attributes(el, _ATTRS["Stream"], "Stream")
        self.urls(el, "Stream")
        self.no_text(el.text, "Stream")
        url = el.get("url", "")
        if not url.strip():
            self.problem("<Stream>: url is required")
        track = el.get("track")
        if track is not None:
            self.problem("<Stream>: track is for unidirectional <Start><Stream> only; <Connect> streams the inbound track")
        params: list[Parameter] = []
        for child in el:
            self.no_text(child.tail, "Stream")
            if child.tag != "Parameter":
                self.problem(f"<Stream>: unexpected child <{child.tag}>")
                continue
            self.attributes(child, _ATTRS["Parameter"], "Parameter")
            self.no_text(child.text, "Parameter")
            self.no_children(child, "Parameter")
            name, value = child.get("name"), child.get("value")
            if not name:
                self.problem("<Parameter>: name is required")
                continue
            if value is None:
                self.problem(f"<Parameter name={name!r}>: value is required")
                value = ""
            if len(value) > MAX_PARAMETER_VALUE_CHARS:
                self.problem(f"<Parameter name={name!r}>: value exceeds {MAX_PARAMETER_VALUE_CHARS} characters")
            params.append(Parameter(name, value))
        return Stream(
            url=url.strip(),
            name=el.get("name"),
            track=track,
            status_callback=el.get("statusCallback"),
            status_callback_method=self.method(el, "statusCallbackMethod", "Stream"),
            parameters=tuple(params),
        )

    def v_hangup(self, el: ET.Element) -> Hangup:
        self.no_text(el.text, "Hangup")
        for child in el:  # the SDK allows <Parameter> children (SIP headers); nothing else
            if child.tag != "Parameter":
                self.problem(f"<Hangup>: unexpected child <{child.tag}>")
        return Hangup()

    def v_dial(self, el: ET.Element) -> Dial:
        targets: list[DialTarget] = []
        bare = self.text(el)
        if bare:
            targets.append(DialTarget("number", bare))
        for child in el:
            self.no_text(child.tail, "Dial")
            noun = _DIAL_NOUNS.get(child.tag)
            if noun is None:
                self.problem(f"<Dial>: unexpected child <{child.tag}>")
                continue
            value = "".join(child.itertext()).strip()
            if not value:
                self.problem(f"<Dial><{child.tag}>: empty")
                continue
            targets.append(DialTarget(noun[0], value))
        if not targets:
            self.problem("<Dial>: nothing to dial")
        return Dial(
            targets=tuple(targets),
            action=el.get("action"),
            method=self.method(el, "method", "Dial"),
            timeout_s=self.integer(el, "timeout", 30, "Dial", minimum=1),
            time_limit_s=self.integer(el, "timeLimit", 14400, "Dial", minimum=1),
            caller_id=el.get("callerId"),
            record=el.get("record"),
        )

    def v_say(self, el: ET.Element) -> Say:
        for child in el.iter():
            if child is not el and child.tag not in SSML_TAGS:
                self.problem(f"<Say>: unexpected child <{child.tag}>")
        text = " ".join(" ".join(el.itertext()).split())  # SSML element edges are word breaks
        if not text:
            self.problem("<Say>: nothing to say")
        return Say(text=text, voice=el.get("voice"), language=el.get("language"),
                   loop=self.integer(el, "loop", 1, "Say"))

    def v_play(self, el: ET.Element) -> Play:
        self.no_children(el, "Play")
        url = self.text(el) or None
        digits = el.get("digits")
        if url is None and not digits:
            self.problem("<Play>: needs a media URL or digits")
        return Play(url=url, loop=self.integer(el, "loop", 1, "Play"), digits=digits)

    def v_pause(self, el: ET.Element) -> Pause:
        self.no_text(el.text, "Pause")
        self.no_children(el, "Pause")
        return Pause(length_s=self.integer(el, "length", 1, "Pause", minimum=1))

    def v_redirect(self, el: ET.Element) -> Redirect:
        self.no_children(el, "Redirect")
        url = self.text(el)
        if not url:
            self.problem("<Redirect>: needs a URL")
        return Redirect(url=url, method=self.method(el, "method", "Redirect"))

    def v_record(self, el: ET.Element) -> Record:
        self.no_text(el.text, "Record")
        self.no_children(el, "Record")
        return Record(
            action=el.get("action"),
            method=self.method(el, "method", "Record"),
            timeout_s=self.integer(el, "timeout", 5, "Record"),
            max_length_s=self.integer(el, "maxLength", 3600, "Record", minimum=1),
            finish_on_key=el.get("finishOnKey", "1234567890*#"),
            play_beep=self.boolean(el, "playBeep", True, "Record"),
            transcribe=self.boolean(el, "transcribe", False, "Record"),
            trim=el.get("trim", "trim-silence"),
            recording_status_callback=el.get("recordingStatusCallback"),
        )

    def v_reject(self, el: ET.Element) -> Reject:
        self.no_text(el.text, "Reject")
        reason = el.get("reason", "rejected")
        if reason not in ("rejected", "busy"):
            self.problem(f"<Reject>: reason must be rejected or busy, got {reason[:20]!r}")
            reason = "rejected"
        return Reject(reason=reason)
