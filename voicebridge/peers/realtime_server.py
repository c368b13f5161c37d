"""The local OpenAI Realtime server: a faithful, strict, observable fake of the GA API.

It speaks the real wire protocol toward a phone bridge (protocols.md sections 4-7) and plays a
scenario's scripted replies with real speech clips:

- handshake: path `/v1/realtime`, `Authorization: Bearer <key>` (else HTTP 401 with a JSON
  body), an `OpenAI-Beta` header gets error `beta_api_shape_disabled` and a close;
- client events are parsed strictly (`parse_client`); a bad one gets an `error` event and the
  session goes on, as with the real service;
- server VAD from the caller audio's energy, ASR by matching the audio against the caller clips
  (`asr.py`), scripted responses streamed faster than real time, tool calls, cancel/truncate;
- faults from the scenario (`drop`, `stall`, `refuse`) and the session length cap;
- observations per connection in `peer.connections` (times and types of client events, audio
  byte counts, VAD events, responses, truncates, cancels, errors; never audio in logs).

VAD: speech is a 20 ms window whose level exceeds `vad_level_dbfs(threshold)`, which maps
`turn_detection.threshold` linearly from -65 dBFS (0.0) to -25 dBFS (1.0): -45 dBFS at the
default 0.5, under the clips' speech (median about -22 dBFS) and over line noise (-55 dBFS or
less). `speech_started` follows 80 ms of speech in a row; its `audio_start_ms` is the start of
that speech minus `prefix_padding_ms` (not before the buffer's start). `speech_stopped` follows
`silence_duration_ms` of silence; its `audio_end_ms` includes that silence, as the real
service's does. `semantic_vad` is emulated with the same detector at threshold 0.5 and a
silence of 300/600/1000 ms for eagerness high/medium (or auto)/low. All positions are in
milliseconds of input audio since the session's first append.

The per-connection logic runs over any `MessageStream`: in memory on trio's mock clock in tests
(`peer.handle`), or over a real socket (`serve_realtime_peer`).

Why this module is long (about 1,150 lines): `_Session` is one connection of the service, and
its input audio (VAD, recognition), its conversation items and its responses share one state and
one order of events, as the real service's do; cutting it into classes would put that state
behind accessors on every line. What stands apart does live apart: what is observed per
connection (`realtime_log.py`), the strict checks of client events (`realtime_checks.py`), the
server events' shapes (`realtime_events.py`).
"""

from __future__ import annotations

import binascii
import contextlib
import copy
import functools
import json
import logging
import math
import socket
import struct
import time
import urllib.parse
from typing import Any

import attrs
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from voicebridge.edges.audio import Resampler, ulaw_to_pcm16
from voicebridge.peers import realtime_events as ev
from voicebridge.peers.asr import PCM, PCMA, PCMU, Recognition, Recognizer, bytes_per_ms, pcm16_to_alaw, window_dbfs
from voicebridge.peers.clips import load_clip
from voicebridge.peers.scenario import Fault, Reply, Scenario
from voicebridge.edges.protocol._codec import b64_encode, dumps
from voicebridge.edges.protocol.realtime import (
    MAX_CLIENT_FRAME_CHARS,
    AppendAudio,
    ClearBuffer,
    ClientEventError,
    CommitBuffer,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    parse_client,
)
from voicebridge.edges.transport import MessageStream, StreamClosed, TrioWebSocketStream
from voicebridge.peers.realtime_checks import (
    SEMANTIC_SILENCE_MS,
    WORDS,
    _raw_type,
    _response_problem,
    _session_problem,
    _spoken_text,
    _words_upto,
)
from voicebridge.peers.realtime_log import (
    CallLog,
    CancelLog,
    ConnLog,
    ErrorLog,
    Rejection,
    ResponseLog,
    TruncateLog,
    VadEvent,
    _setting,
)

log = logging.getLogger(__name__)

# Events queued for a client that does not read them. Past this the connection is dropped (as a
# real server drops a client whose socket buffer stays full), so the queue never grows without end.
OUT_QUEUE_EVENTS = 4096

REALTIME_PATH = "/v1/realtime"
DEFAULT_MODEL = "gpt-realtime"
WINDOW_MS = 20
ONSET_WINDOWS = 4  # 80 ms of speech in a row starts a turn
KEEP_IDLE_AUDIO_MS = 1000  # audio kept before speech (beyond the prefix padding) while nobody talks
MIN_COMMIT_MS = 100
ARGS_DELTA_CHARS = 16
_CLIENT_TYPES = {
    SessionUpdate: "session.update", AppendAudio: "input_audio_buffer.append",
    CommitBuffer: "input_audio_buffer.commit", ClearBuffer: "input_audio_buffer.clear",
    ItemCreate: "conversation.item.create", ItemTruncate: "conversation.item.truncate",
    ItemDelete: "conversation.item.delete", ItemRetrieve: "conversation.item.retrieve",
    ResponseCreate: "response.create", ResponseCancel: "response.cancel",
}


def vad_level_dbfs(threshold: float) -> float:
    """The window level (dBFS) above which the VAD hears speech, for `turn_detection.threshold`."""
    return -65.0 + 40.0 * min(1.0, max(0.0, threshold))


# -- handshake ------------------------------------------------------------------------------


class HandshakeRejected(Exception):
    """The WebSocket upgrade is refused with an HTTP status and a JSON error body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


@attrs.frozen
class Handshake:
    model: str
    beta: bool  # an OpenAI-Beta header was sent
    header_names: tuple[str, ...]


# -- the peer -------------------------------------------------------------------------------


class RealtimePeer:
    """A scripted Realtime model server; one instance serves any number of connections.

    `speed`: audio is generated at this multiple of real time (`math.inf`: no pacing);
    `delta_ms`: audio per `response.output_audio.delta`; `session_max_s`: the session cap;
    `record_audio`: keep the caller audio received in `ConnLog.audio`; `api_key`: when set,
    only this bearer key is accepted; `seed`: makes the ids reproducible; `transcript_delay_s`:
    send each caller transcript this late, as the real API does (after the answer began). Faults are
    server-wide: each fires `times` times over all connections.
    """

    def __init__(
        self, scenario: Scenario, *, speed: float = 4.0, delta_ms: int = 100, session_max_s: float = 3600.0,
        record_audio: bool = False, api_key: str | None = None, seed: int | None = None,
        transcript_delay_s: float = 0.0,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (math.inf: as fast as possible), got {speed!r}")
        if not 10 <= delta_ms <= 1000:
            raise ValueError(f"delta_ms must be within 10..1000, got {delta_ms!r}")
        if not session_max_s > 0:
            raise ValueError(f"session_max_s must be > 0, got {session_max_s!r}")
        _check_scenario_clips(scenario)
        self.scenario = scenario
        self.speed = float(speed)
        self.delta_ms = int(delta_ms)
        self.session_max_s = float(session_max_s)
        self.record_audio = record_audio
        if not 0 <= transcript_delay_s <= 10:
            raise ValueError(f"transcript_delay_s must be within 0..10, got {transcript_delay_s!r}")
        self.transcript_delay_s = float(transcript_delay_s)
        self.api_key = api_key
        self.connections: list[ConnLog] = []
        self.rejections: list[Rejection] = []
        self.ids = ev.IdMaker(seed)
        self.recognizer = Recognizer()
        self.faults_left = [f.times for f in scenario.faults]

    def check_handshake(self, path: str, headers: dict[str, str]) -> Handshake:
        """Accept or refuse a WebSocket upgrade (raises HandshakeRejected); consumes `refuse` faults."""
        now = trio.current_time()
        low = {k.lower(): v for k, v in headers.items()}
        target = urllib.parse.urlsplit(path)
        for i, fault in enumerate(self.scenario.faults):
            if fault.kind == "refuse" and self.faults_left[i] > 0:
                self.faults_left[i] -= 1
                self.rejections.append(Rejection(now, 503, target.path))
                log.info("realtime peer: refusing a connection (scenario fault)")
                raise HandshakeRejected(503, ev.http_error_body(
                    "The server is overloaded or not ready yet.", type="server_error", code=None))
        if target.path != REALTIME_PATH:
            self.rejections.append(Rejection(now, 404, target.path))
            raise HandshakeRejected(404, ev.http_error_body(
                f"Invalid URL (GET {target.path[:100]})", type="invalid_request_error", code=None))
        auth = low.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key:
            self.rejections.append(Rejection(now, 401, target.path))
            raise HandshakeRejected(401, ev.http_error_body(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", type="invalid_request_error", code=None))
        if self.api_key is not None and key != self.api_key:
            self.rejections.append(Rejection(now, 401, target.path))
            raise HandshakeRejected(401, ev.http_error_body(
                "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key"))
        query = urllib.parse.parse_qs(target.query)
        model = (query.get("model") or [DEFAULT_MODEL])[0]
        return Handshake(model=model, beta="openai-beta" in low, header_names=tuple(sorted(low)))

    async def handle(self, stream: MessageStream, *, path: str, headers: dict[str, str]) -> None:
        """Serve one connection. A refused handshake closes the stream with 1006, reason "HTTP <status>"."""
        try:
            handshake = self.check_handshake(path, headers)
        except HandshakeRejected as exc:
            await stream.aclose(1006, f"HTTP {exc.status}")
            return
        await self.serve_session(stream, handshake)

    async def serve_session(self, stream: MessageStream, handshake: Handshake) -> None:
        """Run the session of an accepted connection until either side closes it."""
        await _Session(self, stream, handshake).run()

    def clip_audio(self, clip: str, fmt: dict[str, Any]) -> bytes:
        """An assistant clip's audio in an output format."""
        return _clip_in_format(clip, fmt["type"])


def _check_scenario_clips(scenario: Scenario) -> None:
    chains = [*scenario.on_purpose.values(), *scenario.on_caller.values(), scenario.fallback]
    for chain in chains:
        for reply in chain:
            if reply.say is not None and load_clip(reply.say).speaker != "assistant":
                raise ValueError(f"scenario {scenario.name}: {reply.say!r} is not an assistant clip")
    for name in scenario.on_caller:
        if load_clip(name).speaker != "caller":
            raise ValueError(f"scenario {scenario.name}: on_caller key {name!r} is not a caller clip")


@functools.lru_cache(maxsize=64)
def _clip_in_format(clip: str, fmt_type: str) -> bytes:
    audio = load_clip(clip).audio
    if fmt_type == PCMU:
        return audio
    pcm8k = ulaw_to_pcm16(audio)
    if fmt_type == PCMA:
        return pcm16_to_alaw(pcm8k)
    return Resampler(8000, 24000).process(pcm8k)


async def serve_realtime_peer(
    peer: RealtimePeer, *, host: str = "127.0.0.1", port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `peer` over WebSocket until cancelled; `task_status.started(url)` gives the URL."""
    async def handler(request: WebSocketRequest) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            handshake = peer.check_handshake(request.path, headers)
        except HandshakeRejected as exc:
            await request.reject(exc.status, extra_headers=[(b"content-type", b"application/json")], body=exc.body)
            return
        ws = await request.accept()
        await peer.serve_session(_ServerWebSocketStream(ws), handshake)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(
            serve_websocket, handler, host, port, None, max_message_size=MAX_CLIENT_FRAME_CHARS,
            disconnect_timeout=5.0))
        task_status.started(f"ws://{host}:{server.port}{REALTIME_PATH}")


class _ServerWebSocketStream(TrioWebSocketStream):
    """The server side of a trio-websocket connection; `aclose(1006)` drops the TCP connection."""

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if code != 1006:
            await super().aclose(code, reason)
            return
        raw = getattr(self.ws, "_stream", None)  # no public abort in trio-websocket
        if raw is None:
            await super().aclose(1011, reason)
            return
        if isinstance(raw, trio.SocketStream):
            # RST instead of FIN: the connection breaks as on a network failure (if the socket allows it)
            with contextlib.suppress(OSError):
                raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await raw.aclose()


# -- one connection --------------------------------------------------------------------------


@attrs.frozen
class _Close:
    code: int
    reason: str


@attrs.define(eq=False)
class _Item:
    """A conversation item and what the server knows about it."""

    wire: dict[str, Any]
    kind: str  # user_audio, assistant, function_call, client
    audio_ms: float = 0.0  # user audio committed; assistant audio generated (after truncation: kept)
    full_ms: float = 0.0  # assistant: the clip's whole length
    transcript: str = ""  # assistant: the full transcript


@attrs.frozen
class _Part:
    say: str | None = None  # assistant clip
    transcript: str = ""
    call: str | None = None
    args: dict[str, Any] = attrs.Factory(dict)


@attrs.define(eq=False)
class _Resp:
    id: str
    log: ResponseLog
    parts: list[_Part]
    fmt: dict[str, Any]
    voice: str
    modalities: list[str]
    metadata: dict[str, str] | None
    max_output_tokens: int | str
    in_conversation: bool
    fault: tuple[int, Fault] | None
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    output: list[dict[str, Any]] = attrs.Factory(list)
    items: list[_Item] = attrs.Factory(list)
    text_out: str = ""  # transcript/text sent so far, for usage
    audio_ms: float = 0.0
    first_audio_at: float | None = None
    closed: bool = False  # nothing more may be sent for it
    finished: bool = False


class _Session:
    def __init__(self, peer: RealtimePeer, stream: MessageStream, handshake: Handshake) -> None:
        self.peer = peer
        self.stream = stream
        self.handshake = handshake
        self.ids = peer.ids
        self.scenario = peer.scenario
        now = trio.current_time()
        self.session_id = self.ids.session()
        self.conversation_id = self.ids.conversation()
        self.expires_at = int(time.time() + peer.session_max_s)
        self.log = ConnLog(index=len(peer.connections) + 1, model=handshake.model, opened_at=now,
                           session_id=self.session_id, header_names=list(handshake.header_names),
                           audio=bytearray() if peer.record_audio else None)
        peer.connections.append(self.log)
        self.config = ev.default_session(handshake.model)
        self.out_send, self.out_recv = trio.open_memory_channel[Any](OUT_QUEUE_EVENTS)
        self.closing = False
        self.nursery: trio.Nursery | None = None
        # conversation
        self.items: list[_Item] = []
        self.call_ids: set[str] = set()
        self.assistant_audio_sent = False
        # input audio and VAD
        self.pending = bytearray()  # audio short of a whole VAD window
        self.buf = bytearray()  # the input audio buffer (since the last commit, trimmed while idle)
        self.buf_start_ms = 0.0
        self.in_ms = 0.0  # all input audio received, in ms
        self.vad_ms = 0.0  # input audio the VAD has looked at
        self.in_fmt = self._input_format()
        self.speaking = False
        self.speech_run = 0
        self.onset_ms = 0.0
        self.silence_ms = 0.0
        self.last_speech_end_ms = 0.0
        self.turn_item: str | None = None
        self.turn_start_ms = 0
        # responses
        self.active: _Resp | None = None
        self.response_count = 0
        self.chain: list[Reply] = []
        self.tool_output_pending = False
        self.pending_transcript: str | None = None
        self.unanswered: Recognition | None = None
        self.prev_input_tokens = (0, 0)  # (text, audio) of the last response, for cached tokens
        self.idle_base: float | None = None
        self.idle_kick = trio.Event()

    # -- plumbing --------------------------------------------------------------------------

    async def run(self) -> None:
        log.info("realtime peer: connection %d open (model %s)", self.log.index, self.handshake.model)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._writer)
            if self.handshake.beta:
                self._error("The Realtime API beta shape is disabled: remove the OpenAI-Beta header to use the GA "
                            "interface.", code="beta_api_shape_disabled")
                self._close(1000, "beta_api_shape_disabled")
                return
            self.emit(ev.session_created(self.ids.event(), self._session_object()))
            nursery.start_soon(self._reader)
            nursery.start_soon(self._session_timer)
            nursery.start_soon(self._idle_watch)
        log.info("realtime peer: connection %d closed by %s (%s)", self.log.index, self.log.closed_by,
                 self.log.close_code)

    def emit(self, event: dict[str, Any]) -> None:
        if not self.closing:
            self._queue(event)

    def _close(self, code: int, reason: str) -> None:
        if not self.closing:
            self._queue(_Close(code, reason))
            self.closing = True

    def _queue(self, item: dict[str, Any] | _Close) -> None:
        try:
            self.out_send.send_nowait(item)
        except trio.WouldBlock:  # the client stopped reading: drop it rather than queue forever
            log.warning("realtime peer: connection %d dropped, %d events unread", self.log.index, OUT_QUEUE_EVENTS)
            self._closed("server", 1006)
            self._end()

    async def _writer(self) -> None:
        async with self.out_recv:
            async for item in self.out_recv:
                if isinstance(item, _Close):
                    self._closed("server", item.code)
                    with trio.move_on_after(5.0):  # a client that never answers the close frame
                        await self.stream.aclose(item.code, item.reason)
                    break
                try:
                    await self.stream.send(dumps(item))
                except StreamClosed as exc:
                    self._closed("client", exc.code)
                    break
                self.log.sent_events.append((trio.current_time(), item["type"]))
        self._end()

    async def _reader(self) -> None:
        while True:
            try:
                text = await self.stream.receive()
            except StreamClosed as exc:
                self._closed("client", exc.code)
                self._end()
                return
            self._on_text(text)

    def _closed(self, by: str, code: int | None) -> None:
        if self.log.closed_by is None:
            self.log.closed_by, self.log.close_code, self.log.closed_at = by, code, trio.current_time()

    def _end(self) -> None:
        self.closing = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _session_timer(self) -> None:
        await trio.sleep(self.peer.session_max_s)
        minutes = self.peer.session_max_s / 60
        limit = f"{minutes:g} minutes" if minutes >= 1 else f"{self.peer.session_max_s:g} seconds"
        self._error(f"Your session hit the maximum duration of {limit}.", code="session_expired")
        self._close(1000, "session_expired")

    def _error(self, message: str, *, code: str | None, param: str | None = None,
               client_event_id: str | None = None, type: str = "invalid_request_error") -> None:
        self.log.errors_sent.append(ErrorLog(trio.current_time(), type, code, message, param, client_event_id))
        log.debug("realtime peer: error %s sent", code)
        self.emit(ev.error(self.ids.event(), message=message, type=type, code=code, param=param,
                           client_event_id=client_event_id))

    def _session_object(self) -> dict[str, Any]:
        return ev.session_object(self.config, session_id=self.session_id, expires_at=self.expires_at)

    def _input_format(self) -> str:
        return str(self.config["audio"]["input"]["format"]["type"])

    def _vad(self) -> dict[str, Any] | None:
        vad = self.config["audio"]["input"]["turn_detection"]
        return vad if isinstance(vad, dict) else None

    # -- client events -----------------------------------------------------------------------

    def _on_text(self, text: str) -> None:
        now = trio.current_time()
        try:
            event = parse_client(text)
        except ClientEventError as exc:
            self.log.client_events.append((now, _raw_type(text)))
            self._error(exc.plain_message, code=exc.code, param=exc.param, client_event_id=exc.event_id)
            return
        self.log.client_events.append((now, _CLIENT_TYPES[type(event)]))
        if isinstance(event, ItemDelete):
            self._item_delete(event)
            return
        if isinstance(event, ItemRetrieve):
            self._item_retrieve(event)
            return
        if isinstance(event, AppendAudio):
            self._append(event)
        elif isinstance(event, SessionUpdate):
            self._session_update(event)
        elif isinstance(event, ResponseCreate):
            self._response_create(event)
        elif isinstance(event, ResponseCancel):
            self._response_cancel(event)
        elif isinstance(event, ItemCreate):
            self._item_create(event)
        elif isinstance(event, ItemTruncate):
            self._truncate(event)
        elif isinstance(event, CommitBuffer):
            self._commit_manual(event)
        else:
            self._clear_buffer()

    def _session_update(self, event: SessionUpdate) -> None:
        s = event.session
        eid = event.event_id
        if s.get("type") != "realtime":
            self._error("Cannot change a realtime session into a transcription session.", code="invalid_value",
                        param="session.type", client_event_id=eid)
            return
        if "model" in s and s["model"] != self.config["model"]:
            self._error("Cannot update a session's model.", code="invalid_value", param="session.model",
                        client_event_id=eid)
            return
        problem = _session_problem(s)
        if problem is not None:
            message, code, param = problem
            self._error(message, code=code, param=param, client_event_id=eid)
            return
        voice = ((s.get("audio") or {}).get("output") or {}).get("voice")
        if voice is not None and voice != self.config["audio"]["output"]["voice"] and self.assistant_audio_sent:
            self._error("Cannot update a conversation's voice if assistant audio is present.",
                        code="cannot_update_voice", param="session.audio.output.voice", client_event_id=eid)
            return
        self.log.session_updates.append(copy.deepcopy(s))
        old_fmt, old_vad = self._input_format(), self._vad()
        self.config = ev.merge_session(self.config, s)
        if self._input_format() != old_fmt:
            self._reset_input()  # audio in the old format cannot be mixed with the new
        elif self._vad() is None and old_vad is not None:
            self.buf += self.pending
            self.pending.clear()
            self._reset_vad()
        self.emit(ev.session_updated(self.ids.event(), self._session_object()))
        self._kick_idle()

    # -- input audio and VAD ----------------------------------------------------------------

    def _append(self, event: AppendAudio) -> None:
        audio = binascii.a2b_base64(event.audio_b64)
        self.log.audio_bytes_in += len(audio)
        ms = len(audio) / bytes_per_ms(self.in_fmt)
        self.log.audio_ms_in += ms
        self.in_ms += ms
        if self.log.audio is not None:
            self.log.audio += audio
        vad = self._vad()
        if vad is None:
            self.buf += audio
            self.vad_ms = self.in_ms
            return
        self.pending += audio
        step = bytes_per_ms(self.in_fmt) * WINDOW_MS
        while len(self.pending) >= step and not self.closing:
            chunk = bytes(self.pending[:step])
            del self.pending[:step]
            self.buf += chunk
            start = self.vad_ms
            self.vad_ms += WINDOW_MS
            self._vad_window(vad, chunk, start)

    def _vad_window(self, vad: dict[str, Any], chunk: bytes, start_ms: float) -> None:
        semantic = vad.get("type") == "semantic_vad"
        threshold = 0.5 if semantic else float(_setting(vad, "threshold", 0.5))
        speech = window_dbfs(chunk, self.in_fmt) > vad_level_dbfs(threshold)
        end_ms = start_ms + WINDOW_MS
        if not self.speaking:
            if not speech:
                self.speech_run = 0
                self._trim_idle_buffer(vad)
                return
            self.speech_run += 1
            if self.speech_run == 1:
                self.onset_ms = start_ms
            if self.speech_run >= ONSET_WINDOWS:
                self._speech_started(vad)
            return
        if speech:
            self.silence_ms = 0.0
            self.last_speech_end_ms = end_ms
            return
        self.silence_ms += WINDOW_MS
        if semantic:
            needed = SEMANTIC_SILENCE_MS.get(str(vad.get("eagerness") or "auto"), 600)
        else:
            needed = int(_setting(vad, "silence_duration_ms", 500))
        if self.silence_ms >= needed:
            self._speech_stopped(vad, end_ms)

    def _trim_idle_buffer(self, vad: dict[str, Any]) -> None:
        keep_ms = int(vad.get("prefix_padding_ms") or 0) + KEEP_IDLE_AUDIO_MS
        bpm = bytes_per_ms(self.in_fmt)
        excess = len(self.buf) - keep_ms * bpm
        if excess > 4 * bpm * WINDOW_MS:  # trim in steps, not every window
            excess -= excess % bpm
            del self.buf[:excess]
            self.buf_start_ms += excess / bpm

    def _speech_started(self, vad: dict[str, Any]) -> None:
        self.speaking = True
        self.silence_ms = 0.0
        self.last_speech_end_ms = self.vad_ms
        self.turn_item = self.ids.item()
        padding = int(_setting(vad, "prefix_padding_ms", 300))
        self.turn_start_ms = int(max(self.buf_start_ms, self.onset_ms - padding, 0))
        now = trio.current_time()
        self.log.vad.append(VadEvent(now, "speech_started", self.turn_item, self.turn_start_ms, int(self.onset_ms)))
        self.emit(ev.speech_started(self.ids.event(), self.turn_item, self.turn_start_ms))
        self.idle_base = None
        if vad.get("interrupt_response", True) and self.active is not None and self.active.in_conversation:
            self._cancel(self.active, "turn_detected")
        self._kick_idle()

    def _speech_stopped(self, vad: dict[str, Any], end_ms: float) -> None:
        item_id = self.turn_item or self.ids.item()
        now = trio.current_time()
        self.log.vad.append(VadEvent(now, "speech_stopped", item_id, int(end_ms), int(self.last_speech_end_ms)))
        self.emit(ev.speech_stopped(self.ids.event(), item_id, int(end_ms)))
        heard = self._commit(item_id, self.turn_start_ms, end_ms)
        self._reset_vad()
        if not vad.get("create_response", True):
            self.unanswered = heard
        elif self.active is not None:
            self.unanswered = heard
            self.log.notes.append(f"no response for {item_id}: response {self.active.id} is still active")
        else:
            chain = self.scenario.on_caller.get(heard.clip or "") or self.scenario.fallback
            self._start_response(chain, trigger="caller" if heard.clip in self.scenario.on_caller else "fallback",
                                 heard=heard.clip)
        self._kick_idle()

    def _commit(self, item_id: str, start_ms: float, end_ms: float) -> Recognition:
        """Commit the buffer's audio up to `end_ms` as a user item; recognise and transcribe it."""
        bpm = bytes_per_ms(self.in_fmt)
        a = max(0, int(round((start_ms - self.buf_start_ms) * bpm)))
        b = max(a, min(len(self.buf), int(round((end_ms - self.buf_start_ms) * bpm))))
        a -= a % (2 if self.in_fmt == PCM else 1)
        b -= b % (2 if self.in_fmt == PCM else 1)
        audio = bytes(self.buf[a:b])
        del self.buf[:b]
        self.buf_start_ms += b / bpm
        previous = self.items[-1].wire["id"] if self.items else None
        now = trio.current_time()
        self.log.vad.append(VadEvent(now, "committed", item_id, int(end_ms), int(end_ms)))
        self.emit(ev.committed(self.ids.event(), item_id, previous))
        item = _Item(ev.user_audio_item(item_id), "user_audio", audio_ms=len(audio) / bpm)
        self.items.append(item)
        self.emit(ev.conversation_item_added(self.ids.event(), copy.deepcopy(item.wire), previous))
        self.emit(ev.conversation_item_done(self.ids.event(), copy.deepcopy(item.wire), previous))
        heard = self.peer.recognizer.recognise(audio, self.in_fmt)
        self.log.transcripts.append((item_id, heard.clip, heard.text))
        if self.config["audio"]["input"].get("transcription"):
            item.wire["content"][0]["transcript"] = heard.text
            done = ev.transcription_completed(self.ids.event(), item_id, heard.text, audio_ms=item.audio_ms)
            if self.peer.transcript_delay_s and self.nursery is not None:
                self.nursery.start_soon(self._late, done, self.peer.transcript_delay_s)
            else:
                self.emit(done)
        return heard

    async def _late(self, event: dict[str, Any], delay_s: float) -> None:
        """Send `event` after `delay_s`, as the real API sends a caller's transcript after the answer began."""
        await trio.sleep(delay_s)
        self.emit(event)

    def _commit_manual(self, event: CommitBuffer) -> None:
        self.buf += self.pending
        self.pending.clear()
        bpm = bytes_per_ms(self.in_fmt)
        have_ms = len(self.buf) / bpm
        if have_ms < MIN_COMMIT_MS:
            self._error(f"Error committing input audio buffer: buffer too small. Expected at least "
                        f"{MIN_COMMIT_MS}ms of audio, but buffer only has {have_ms:.2f}ms of audio.",
                        code="input_audio_buffer_commit_empty", client_event_id=event.event_id)
            return
        item_id = self.turn_item or self.ids.item()
        self.unanswered = self._commit(item_id, self.buf_start_ms, self.buf_start_ms + have_ms)
        self.vad_ms = self.in_ms
        self._reset_vad()

    def _clear_buffer(self) -> None:
        self._reset_input()
        self.emit(ev.cleared(self.ids.event()))

    def _reset_input(self) -> None:
        self.buf_start_ms = self.in_ms
        self.vad_ms = self.in_ms
        self.buf.clear()
        self.pending.clear()
        self.in_fmt = self._input_format()
        self._reset_vad()

    def _reset_vad(self) -> None:
        self.speaking = False
        self.speech_run = 0
        self.silence_ms = 0.0
        self.turn_item = None

    # -- idle timeout ------------------------------------------------------------------------

    def _kick_idle(self) -> None:
        self.idle_kick.set()

    def _idle_deadline(self) -> float:
        vad = self._vad()
        if (vad is None or vad.get("type") != "server_vad" or not vad.get("idle_timeout_ms")
                or self.idle_base is None or self.active is not None or self.speaking):
            return math.inf
        return self.idle_base + int(vad["idle_timeout_ms"]) / 1000

    async def _idle_watch(self) -> None:
        while True:
            self.idle_kick = trio.Event()
            deadline = self._idle_deadline()
            with trio.move_on_at(deadline) as scope:
                await self.idle_kick.wait()
            if scope.cancelled_caught and self._idle_deadline() <= trio.current_time():
                self._idle_timeout()

    def _idle_timeout(self) -> None:
        vad = self._vad()
        assert vad is not None
        self.idle_base = None
        item_id = self.ids.item()
        end_ms = int(self.vad_ms)
        start_ms = max(0, end_ms - int(vad["idle_timeout_ms"]))  # the silent stretch, as the service reports it
        now = trio.current_time()
        self.log.vad.append(VadEvent(now, "timeout_triggered", item_id, end_ms, start_ms))
        self.emit(ev.timeout_triggered(self.ids.event(), item_id, start_ms, end_ms))
        self._commit(item_id, start_ms, end_ms)
        self._reset_vad()
        chain = self.scenario.on_purpose.get("reprompt") or self.scenario.fallback
        self._start_response(chain, trigger="timeout", purpose=None, heard=None)

    # -- conversation items -----------------------------------------------------------------

    def _find(self, item_id: str) -> _Item | None:
        for item in self.items:
            if item.wire.get("id") == item_id:
                return item
        return None

    def _item_create(self, event: ItemCreate) -> None:
        eid = event.event_id
        item = event.item
        problem = self._item_problem(item)
        if problem is not None:
            self._error(problem[0], code="invalid_value", param=problem[1], client_event_id=eid)
            return
        position = len(self.items)
        if event.previous_item_id is not None and event.previous_item_id != "root":
            found = self._find(event.previous_item_id)
            if found is None:
                self._error(f"Previous item with id '{event.previous_item_id}' not found.", code="invalid_value",
                            param="previous_item_id", client_event_id=eid)
                return
            position = self.items.index(found) + 1
        elif event.previous_item_id == "root":
            position = 0
        item_id = item.get("id") or self.ids.item()
        wire = ev.client_item(item, item_id)
        kind = "function_call" if item["type"] == "function_call" else "client"
        stored = _Item(wire, kind)
        self.items.insert(position, stored)
        previous = self.items[position - 1].wire["id"] if position > 0 else None
        self.log.items_created.append(copy.deepcopy(wire))
        self.emit(ev.conversation_item_added(self.ids.event(), copy.deepcopy(wire), previous))
        self.emit(ev.conversation_item_done(self.ids.event(), copy.deepcopy(wire), previous))
        if item["type"] == "function_call":
            self.call_ids.add(str(item["call_id"]))
        elif item["type"] == "function_call_output":
            self.tool_output_pending = True
            self.pending_transcript = _spoken_text(str(item["output"]))

    def _item_problem(self, item: dict[str, Any]) -> tuple[str, str] | None:
        item_id = item.get("id")
        if item_id is not None:
            if not isinstance(item_id, str) or not 0 < len(item_id) <= 32:
                return "Invalid 'item.id': expected a string of at most 32 characters.", "item.id"
            if self._find(item_id) is not None:
                return f"Item with id '{item_id}' already exists.", "item.id"
        if item["type"] == "function_call_output":
            if item["call_id"] not in self.call_ids:
                return (f"No tool call found for function call output with call_id {item['call_id']}.",
                        "item.call_id")
            return None
        if item["type"] == "function_call":
            for key in ("name", "arguments", "call_id"):
                if not isinstance(item.get(key), str):
                    return f"Missing required parameter: 'item.{key}'.", f"item.{key}"
            return None
        allowed = {"user": ("input_text", "input_audio"), "system": ("input_text",), "assistant": ("output_text",)}
        role = item["role"]
        for i, part in enumerate(item["content"]):
            if part.get("type") not in allowed[role]:
                return (f"Invalid value: '{part.get('type')}'. {role} messages take "
                        + " or ".join(allowed[role]) + " content.", f"item.content[{i}].type")
            if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                return f"Missing required parameter: 'item.content[{i}].text'.", f"item.content[{i}].text"
        return None

    def _item_delete(self, event: ItemDelete) -> None:
        found = self._find(event.item_id)
        if found is None:
            self._error(f"Error deleting item: the item with id '{event.item_id}' does not exist.",
                        code="item_delete_invalid_item_id", param="item_id", client_event_id=event.event_id)
            return
        self.items.remove(found)
        self.emit(ev.conversation_item_deleted(self.ids.event(), event.item_id))

    def _item_retrieve(self, event: ItemRetrieve) -> None:
        found = self._find(event.item_id)
        if found is None:
            self._error(f"Error retrieving item: the item with id '{event.item_id}' does not exist.",
                        code="item_retrieve_invalid_item_id", param="item_id", client_event_id=event.event_id)
            return
        self.emit(ev.conversation_item_retrieved(self.ids.event(), copy.deepcopy(found.wire)))

    def _truncate(self, event: ItemTruncate) -> None:
        now = trio.current_time()
        eid = event.event_id
        found = self._find(event.item_id)
        if found is None or found.kind != "assistant" or found.wire["content"][:1] == [] \
                or found.wire["content"][0].get("type") != "output_audio":
            self.log.truncates.append(TruncateLog(now, event.item_id, event.audio_end_ms, None, False))
            self._error(f"Item with item_id not found: {event.item_id}" if found is None
                        else "Only assistant messages with audio can be truncated.",
                        code="item_truncate_invalid_item_id", param="item_id", client_event_id=eid)
            return
        generated = int(found.audio_ms)
        if event.content_index != 0:
            self.log.truncates.append(TruncateLog(now, event.item_id, event.audio_end_ms, generated, False))
            self._error("Invalid 'content_index': the item has one content part (index 0).", code="invalid_value",
                        param="content_index", client_event_id=eid)
            return
        if event.audio_end_ms > generated:
            self.log.truncates.append(TruncateLog(now, event.item_id, event.audio_end_ms, generated, False))
            self._error(f"Audio content of {generated}ms is already shorter than {event.audio_end_ms}ms",
                        code="invalid_value", param="audio_end_ms", client_event_id=eid)
            return
        self.log.truncates.append(TruncateLog(now, event.item_id, event.audio_end_ms, generated, True))
        found.audio_ms = float(event.audio_end_ms)
        heard = _words_upto(found.transcript, event.audio_end_ms / found.full_ms if found.full_ms else 0.0)
        found.wire["content"][0]["transcript"] = heard
        self.emit(ev.conversation_item_truncated(self.ids.event(), event.item_id, 0, event.audio_end_ms))

    # -- responses ---------------------------------------------------------------------------

    def _response_create(self, event: ResponseCreate) -> None:
        eid = event.event_id
        params = event.response
        if self.active is not None:
            self._error(f"Conversation already has an active response in progress: {self.active.id}. Wait until "
                        "the response is finished before creating a new one.",
                        code="conversation_already_has_active_response", client_event_id=eid)
            return
        problem = _response_problem(params)
        if problem is not None:
            self._error(problem[0], code=problem[1], param=problem[2], client_event_id=eid)
            return
        metadata = params.get("metadata") or None
        purpose = metadata.get("purpose") if metadata else None
        heard: str | None = None
        if purpose is not None:
            chain = self.scenario.on_purpose.get(purpose)
            trigger = "purpose" if chain else "fallback"
        elif self.tool_output_pending:
            chain = tuple(self.chain) or None
            trigger = "tool_output" if chain else "fallback"
        elif self.unanswered is not None:
            heard = self.unanswered.clip
            chain = self.scenario.on_caller.get(heard or "")
            trigger = "caller" if chain else "fallback"
        else:
            chain, trigger = None, "fallback"
        self._start_response(chain or self.scenario.fallback, trigger=trigger, purpose=purpose, heard=heard,
                             params=params)

    def _start_response(self, chain: tuple[Reply, ...], *, trigger: str, purpose: str | None = None,
                        heard: str | None = None, params: dict[str, Any] | None = None) -> None:
        params = params or {}
        reply = chain[0]
        override = self.pending_transcript if trigger == "tool_output" else None
        self.chain = list(chain[1:])
        self.tool_output_pending = False
        self.pending_transcript = None
        self.unanswered = None
        self.idle_base = None
        parts = self._parts(reply, override)
        self.response_count += 1
        index = self.response_count
        fault = None
        for i, f in enumerate(self.scenario.faults):
            if f.kind in ("drop", "stall") and f.response == index and self.peer.faults_left[i] > 0:
                fault = (i, f)
                break
        out = self.config["audio"]["output"]
        audio_params = (params.get("audio") or {}).get("output") or {}
        resp = _Resp(
            id=self.ids.response(),
            log=ResponseLog(id="", index=index, trigger=trigger, purpose=purpose, heard=heard,
                            created_at=trio.current_time()),
            parts=parts,
            fmt=dict(audio_params.get("format") or out["format"]),
            voice=str(audio_params.get("voice") or out["voice"]),
            modalities=list(params.get("output_modalities") or self.config["output_modalities"]),
            metadata=params.get("metadata") or None,
            max_output_tokens=params.get("max_output_tokens") or self.config["max_output_tokens"],
            in_conversation=params.get("conversation", "auto") != "none",
            fault=fault,
        )
        resp.log.id = resp.id
        self.log.responses.append(resp.log)
        self.active = resp
        self.emit(ev.response_created(self.ids.event(), self._response_object(resp, "in_progress")))
        tokens = sum(self._conversation_tokens())
        self.emit(ev.rate_limits_updated(self.ids.event(), requests_remaining=4999,
                                         tokens_remaining=max(0, 40000 - tokens - 4096)))
        assert self.nursery is not None
        self.nursery.start_soon(self._run_response, resp)

    def _parts(self, reply: Reply, transcript: str | None) -> list[_Part]:
        tools = {t.get("name") for t in self.config.get("tools") or [] if isinstance(t, dict)}
        call = reply.call
        say = reply.say
        if call is not None and call not in tools:
            self.log.notes.append(f"the scenario calls {call!r}, which the session does not declare: not called")
            call = None
            if say is None:
                say = next((r.say for r in self.scenario.fallback if r.say), None)
        parts: list[_Part] = []
        if say is not None:
            parts.append(_Part(say=say, transcript=transcript or load_clip(say).text))
        if call is not None:
            parts.append(_Part(call=call, args=dict(reply.args)))
        return parts

    async def _run_response(self, r: _Resp) -> None:
        with r.scope:
            for index, part in enumerate(r.parts):
                if part.say is not None:
                    await self._stream_message(r, index, part)
                else:
                    await self._stream_call(r, index, part)
                if r.closed:
                    return
            if await self._fault_point(r, final=True):
                return
            self._finish(r, "completed")

    def _r_emit(self, r: _Resp, event: dict[str, Any]) -> None:
        if not r.closed:
            self.emit(event)

    def _add_output(self, r: _Resp, index: int, item: _Item) -> None:
        r.output.append(item.wire)
        r.items.append(item)
        r.log.items.append(item.wire["id"])
        self._r_emit(r, ev.output_item_added(self.ids.event(), r.id, index, copy.deepcopy(item.wire)))
        if r.in_conversation:
            previous = self.items[-1].wire["id"] if self.items else None
            self.items.append(item)
            self._r_emit(r, ev.conversation_item_added(self.ids.event(), copy.deepcopy(item.wire), previous))

    def _done_output(self, r: _Resp, index: int, item: _Item) -> None:
        self._r_emit(r, ev.output_item_done(self.ids.event(), r.id, index, copy.deepcopy(item.wire)))
        if r.in_conversation:
            position = self.items.index(item) if item in self.items else 0
            previous = self.items[position - 1].wire["id"] if position > 0 else None
            self._r_emit(r, ev.conversation_item_done(self.ids.event(), copy.deepcopy(item.wire), previous))

    async def _stream_message(self, r: _Resp, index: int, part: _Part) -> None:
        assert part.say is not None
        if r.closed:
            return
        item_id = self.ids.item()
        audio_out = "audio" in r.modalities
        item = _Item(ev.assistant_item(item_id, status="in_progress", content=[]), "assistant",
                     transcript=part.transcript)
        self._add_output(r, index, item)
        r.log.says.append(part.say)
        r.log.transcript = part.transcript if r.log.transcript is None else f"{r.log.transcript} {part.transcript}"
        words = WORDS.findall(part.transcript.strip())
        sent_words = 0
        if not audio_out:
            self._r_emit(r, ev.content_part_added(self.ids.event(), r.id, item_id, index, {"type": "text", "text": ""}))
            for word in words:
                self._r_emit(r, ev.output_text_delta(self.ids.event(), r.id, item_id, index, word))
                r.text_out += word
                await trio.sleep(0)
                if r.closed:
                    return
            item.wire["content"] = [ev.text_content(part.transcript)]
            self._r_emit(r, ev.output_text_done(self.ids.event(), r.id, item_id, index, part.transcript))
            self._r_emit(r, ev.content_part_done(self.ids.event(), r.id, item_id, index,
                                                 {"type": "text", "text": part.transcript}))
            item.wire["status"] = "completed"
            self._done_output(r, index, item)
            return
        item.wire["content"] = [ev.audio_content("")]
        self._r_emit(r, ev.content_part_added(self.ids.event(), r.id, item_id, index,
                                              {"type": "audio", "transcript": ""}))
        audio = self.peer.clip_audio(part.say, r.fmt)
        bpm = bytes_per_ms(r.fmt["type"])
        item.full_ms = len(audio) / bpm
        step = self.peer.delta_ms * bpm
        total_chars = max(1, sum(len(w) for w in words))
        pause = self.peer.delta_ms / 1000 / self.peer.speed
        for offset in range(0, len(audio), step):
            if await self._fault_point(r, final=False) or r.closed:
                return
            chunk = audio[offset : offset + step]
            self._r_emit(r, ev.output_audio_delta(self.ids.event(), r.id, item_id, index, b64_encode(chunk)))
            ms = len(chunk) / bpm
            r.audio_ms += ms
            r.log.audio_ms = r.audio_ms
            item.audio_ms += ms
            self.assistant_audio_sent = True
            if r.first_audio_at is None:
                r.first_audio_at = r.log.first_audio_at = trio.current_time()
            fraction = (offset + len(chunk)) / len(audio)
            while sent_words < len(words) and sum(len(w) for w in words[: sent_words + 1]) / total_chars <= fraction:
                self._send_word(r, item, index, words[sent_words])
                sent_words += 1
            await trio.sleep(pause)
            if r.closed:
                return
        for word in words[sent_words:]:
            self._send_word(r, item, index, word)
        self._r_emit(r, ev.output_audio_done(self.ids.event(), r.id, item_id, index))
        self._r_emit(r, ev.output_audio_transcript_done(self.ids.event(), r.id, item_id, index, part.transcript))
        self._r_emit(r, ev.content_part_done(self.ids.event(), r.id, item_id, index,
                                             {"type": "audio", "transcript": part.transcript}))
        item.wire["status"] = "completed"
        item.wire["content"] = [ev.audio_content(part.transcript)]
        self._done_output(r, index, item)

    def _send_word(self, r: _Resp, item: _Item, index: int, word: str) -> None:
        self._r_emit(r, ev.output_audio_transcript_delta(self.ids.event(), r.id, item.wire["id"], index, word))
        r.text_out += word
        item.wire["content"][0]["transcript"] += word

    async def _stream_call(self, r: _Resp, index: int, part: _Part) -> None:
        assert part.call is not None
        if r.closed:
            return
        call_id = self.ids.call()
        arguments = json.dumps(part.args, separators=(",", ":"))
        item = _Item(ev.function_call_item(self.ids.item(), call_id=call_id, name=part.call, arguments="",
                                           status="in_progress"), "function_call")
        self._add_output(r, index, item)
        item_id = item.wire["id"]
        for start in range(0, len(arguments), ARGS_DELTA_CHARS):
            piece = arguments[start : start + ARGS_DELTA_CHARS]
            self._r_emit(r, ev.function_call_arguments_delta(self.ids.event(), r.id, item_id, index, call_id, piece))
            item.wire["arguments"] += piece
            await trio.sleep(0)
            if r.closed:
                return
        self._r_emit(r, ev.function_call_arguments_done(self.ids.event(), r.id, item_id, index, call_id, part.call,
                                                        arguments))
        r.text_out += part.call + arguments
        item.wire["status"] = "completed"
        self.call_ids.add(call_id)
        r.log.calls.append(CallLog(part.call, call_id, arguments))
        self._done_output(r, index, item)

    async def _fault_point(self, r: _Resp, *, final: bool) -> bool:
        """Fire the response's scripted fault once its audio is far enough in; True if it stopped the response."""
        if r.fault is None:
            return False
        i, fault = r.fault
        if not final and r.audio_ms < fault.after_audio_ms:
            return False
        r.fault = None
        if self.peer.faults_left[i] <= 0:
            return False
        self.peer.faults_left[i] -= 1
        self.log.faults.append(f"{fault.kind} in response {r.log.index} after {r.audio_ms:.0f} ms of audio")
        log.info("realtime peer: fault %s in response %d of connection %d", fault.kind, r.log.index, self.log.index)
        if fault.kind == "drop":
            r.closed = True
            self._close(1006, "connection dropped (scenario fault)")
            return True
        if fault.resume_after_ms > 0:  # the model pauses mid-answer, then goes on
            await trio.sleep(fault.resume_after_ms / 1000)
            return False
        r.log.status = "stalled"
        await trio.sleep_forever()
        return True  # pragma: no cover - only a cancel ends a stall

    def _cancel(self, r: _Resp, reason: str) -> None:
        r.closed = True
        r.scope.cancel()
        self.log.cancels.append(CancelLog(trio.current_time(), r.id, reason, r.audio_ms))
        for wire in r.output:
            if wire.get("status") == "in_progress":
                wire["status"] = "incomplete"
        self._finish(r, "cancelled", reason)

    def _response_cancel(self, event: ResponseCancel) -> None:
        r = self.active
        if r is None or (event.response_id is not None and event.response_id != r.id):
            self._error("Cancellation failed: no active response found", code="response_cancel_not_active",
                        client_event_id=event.event_id)
            return
        self._cancel(r, "client_cancelled")

    def _finish(self, r: _Resp, status: str, reason: str | None = None) -> None:
        if r.finished:
            return
        r.finished = True
        r.closed = True
        now = trio.current_time()
        details = {"type": "cancelled", "reason": reason} if status == "cancelled" else None
        self.emit(ev.response_done(self.ids.event(), self._response_object(r, status, details, self._usage(r))))
        r.log.status, r.log.reason, r.log.done_at, r.log.audio_ms = status, reason, now, r.audio_ms
        if self.active is r:
            self.active = None
        played_until = (r.first_audio_at + r.audio_ms / 1000) if r.first_audio_at is not None else now
        self.idle_base = max(now, played_until)
        self._kick_idle()

    def _response_object(self, r: _Resp, status: str, details: dict[str, Any] | None = None,
                         usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return ev.response_object(
            r.id, conversation_id=self.conversation_id if r.in_conversation else None, status=status,
            output=copy.deepcopy(r.output) if status != "in_progress" else [], output_modalities=r.modalities,
            audio_format=r.fmt, voice=r.voice, max_output_tokens=r.max_output_tokens, metadata=r.metadata,
            status_details=details, usage=usage)

    def _conversation_tokens(self) -> tuple[int, int]:
        """(text, audio) input tokens of the conversation as the model reads it now."""
        text = ev.text_token_count(str(self.config.get("instructions") or ""))
        text += ev.text_token_count(json.dumps(self.config.get("tools") or []))
        audio = 0
        for item in self.items:
            wire = item.wire
            if item.kind == "user_audio":
                audio += round(item.audio_ms / 100)  # ~10 tokens per second in
            elif item.kind == "assistant":
                audio += round(item.audio_ms / 50)  # assistant audio as heard, ~20 tokens per second
            elif wire.get("type") == "function_call":
                text += ev.text_token_count(str(wire.get("name", "")) + str(wire.get("arguments", "")))
            elif wire.get("type") == "function_call_output":
                text += ev.text_token_count(str(wire.get("output", "")))
            else:
                text += sum(ev.text_token_count(str(p.get("text") or p.get("transcript") or ""))
                            for p in wire.get("content", []))
        return text, audio

    def _usage(self, r: _Resp) -> dict[str, Any]:
        text, audio = self._conversation_tokens()
        prev_text, prev_audio = self.prev_input_tokens
        cached_text = min(text, prev_text // 64 * 64)
        cached_audio = min(audio, prev_audio // 64 * 64)
        self.prev_input_tokens = (text, audio)
        return ev.usage(input_text=text, input_audio=audio, cached_text=cached_text, cached_audio=cached_audio,
                        output_text=ev.text_token_count(r.text_out), output_audio=round(r.audio_ms / 50))

