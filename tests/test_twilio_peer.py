"""The local Twilio peer: Media Streams caller on a mock clock, and the whole call over loopback."""

from __future__ import annotations

import base64
import json
import random
import re
from functools import partial
from typing import Any, Awaitable, Callable

import pytest
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart import Response, abort, request, websocket
from quart_trio import QuartTrio
from trio.testing import MockClock
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from voicebridge.peers import twiml
from voicebridge.peers.clips import load_clip
from voicebridge.peers.scenario import Scenario, parse_scenario
from voicebridge.peers.twilio_caller import CallerReport, TwilioCaller, new_sid, place_call
from voicebridge.edges.protocol import twilio_media as tm
from voicebridge.edges.transport import MemoryStream, StreamClosed, memory_stream_pair

SILENCE = b"\xff" * 160
TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voice.example.com"


def scenario(steps: str = "", max_s: float = 30) -> Scenario:
    return parse_scenario(f'name = "t"\nmax_s = {max_s}\n{steps}', "test.toml")


def tone(n_bytes: int, seed: int = 0) -> bytes:
    """Noise-like µ-law bytes (never the 0xFF silence code), different for each seed."""
    return bytes(b & 0x7F for b in random.Random(seed).randbytes(n_bytes))


class FakeBridge:
    """The test's end of the media stream: sends bridge frames, records Twilio's with times."""

    def __init__(self, stream: MemoryStream, caller: TwilioCaller) -> None:
        self.stream = stream
        self.caller = caller  # its live report tells the script what the caller has done
        self.sid = caller.stream_sid
        self.events: list[tuple[float, tm.TwilioEvent, dict[str, Any]]] = []
        self.closed: StreamClosed | None = None
        self.t0 = 0.0
        self._changed = trio.Event()

    async def collect(self) -> None:
        while True:
            try:
                text = await self.stream.receive()
            except StreamClosed as exc:
                self.closed = exc
                self._fire()
                return
            event = tm.parse_twilio(text)  # every frame must parse as Twilio's
            self.events.append((trio.current_time() - self.t0, event, json.loads(text)))
            self._fire()

    def _fire(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, check: Callable[[], object], timeout_s: float = 30) -> Any:
        with trio.fail_after(timeout_s):
            while not (found := check()):
                await self._changed.wait()
            return found

    def media(self) -> list[tuple[float, tm.Media, dict[str, Any]]]:
        return [(t, e, raw) for t, e, raw in self.events if isinstance(e, tm.Media)]

    def echo_time(self, name: str) -> float | None:
        return next((t for t, e, _ in self.events if isinstance(e, tm.MarkEcho) and e.name == name), None)

    def echoes(self) -> list[str]:
        return [e.name for _, e, _ in self.events if isinstance(e, tm.MarkEcho)]

    async def wait_echo(self, name: str) -> float:
        return float(await self.wait_for(lambda: self.echo_time(name)))

    async def send_media(self, audio: bytes) -> None:
        await self.stream.send(tm.media(self.sid, base64.b64encode(audio).decode()))

    async def send_mark(self, name: str) -> None:
        await self.stream.send(tm.mark(self.sid, name))

    async def send_clear(self) -> None:
        await self.stream.send(tm.clear(self.sid))

    async def sleep_until(self, t: float) -> None:
        await trio.sleep_until(self.t0 + t)

    def now(self) -> float:
        return trio.current_time() - self.t0


async def run_call(
    scn: Scenario, script: Callable[[FakeBridge], Awaitable[None]], **kw: Any
) -> tuple[CallerReport, FakeBridge]:
    """Run a caller against `script` on an in-memory stream; both ends bounded by max_s."""
    caller = TwilioCaller(scn, **kw)
    twilio_end, bridge_end = memory_stream_pair()
    bridge = FakeBridge(bridge_end, caller)
    reports: list[CallerReport] = []

    async def caller_task() -> None:
        reports.append(await caller.run_stream(twilio_end, {"token": "tok-1"}))

    with trio.fail_after(scn.max_s + 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller_task)
            nursery.start_soon(bridge.collect)
            await bridge.wait_for(lambda: len(bridge.events) >= 2)  # connected, start
            bridge.t0 = caller.report.t0
            await script(bridge)
    return reports[0], bridge


def assert_close(a: float | None, b: float) -> None:
    assert a is not None and a == pytest.approx(b, abs=1e-6), (a, b)


# -- the media stream, in memory on a mock clock ----------------------------------------------


async def test_stream_opens_with_connected_and_start_then_20ms_frames(autojump_clock: MockClock) -> None:
    """Frames come every 20 ms with Twilio's sequence, chunk and timestamp counters."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.wait_for(lambda: len(bridge.media()) >= 25)
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario(), script)
    (_, connected, raw0), (t1, start, raw1) = bridge.events[:2]
    assert isinstance(connected, tm.Connected) and raw0 == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert isinstance(start, tm.Start) and start.sequence == 1 and t1 == 0
    assert start.stream_sid == report.stream_sid and start.call_sid == report.call_sid
    assert start.account_sid == report.account_sid and start.custom_parameters == {"token": "tok-1"}
    assert raw1["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    frames = bridge.media()[:25]
    for n, (t, ev, raw) in enumerate(frames, start=1):
        assert_close(t, n * 0.020)
        assert (ev.chunk, ev.timestamp_ms, ev.track) == (n, n * 20 - 20, "inbound")
        assert raw["sequenceNumber"] == str(n + 1) and raw["media"]["chunk"] == str(n)
        assert ev.payload == SILENCE
    assert report.ended_by == "bridge" and report.close_code == 1000
    assert report.stop_sent is False


async def test_mark_echoes_only_after_the_audio_before_it_has_played(autojump_clock: MockClock) -> None:
    """A mark behind 1 s of audio echoes 1 s later; a mark with nothing buffered echoes at once."""
    times: dict[str, float] = {}

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.send_media(tone(8000))
        await bridge.send_mark("m1")
        await trio.sleep(0.999)
        assert bridge.echo_time("m1") is None  # not a moment early
        times["m1"] = await bridge.wait_echo("m1")
        await bridge.send_mark("m2")
        times["m2"] = await bridge.wait_echo("m2")
        times["sent_m2"] = bridge.now()
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario(), script)
    assert_close(times["m1"], 1.1)
    assert_close(times["m2"], times["sent_m2"])
    m1, m2 = report.marks
    assert (m1.echoed_by, m2.echoed_by) == ("playout", "empty")
    assert_close(m1.due, 1.1)
    # marks, media and everything else share one sequence with no gaps or repeats
    seqs = [int(raw["sequenceNumber"]) for _, _, raw in bridge.events[1:]]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_marks_queue_behind_each_chunk_in_order_of_arrival(autojump_clock: MockClock) -> None:
    """Two half-second chunks sent at once: their marks echo 0.5 s and 1 s later, in order."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.05)
        for name in ("a", "b"):
            await bridge.send_media(tone(4000))
            await bridge.send_mark(name)
        await bridge.wait_echo("b")
        await bridge.stream.aclose(1000)

    _, bridge = await run_call(scenario(), script)
    assert bridge.echoes() == ["a", "b"]
    assert_close(bridge.echo_time("a"), 0.55)
    assert_close(bridge.echo_time("b"), 1.05)


async def test_clear_drops_buffered_audio_and_echoes_pending_marks_at_once(autojump_clock: MockClock) -> None:
    """`clear` empties playout, echoes pending marks in order, and new audio plays from empty."""
    a, b, c = tone(16000, 1), tone(8000, 2), tone(3200, 3)

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.2)
        await bridge.send_media(a)
        await bridge.send_mark("a")
        await bridge.send_media(b)
        await bridge.send_mark("b")
        await bridge.sleep_until(0.7)
        await bridge.send_clear()
        await bridge.wait_echo("b")
        await bridge.send_media(c)
        await bridge.send_mark("c")
        await bridge.wait_echo("c")
        await bridge.sleep_until(2.0)
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario(), script)
    assert bridge.echoes() == ["a", "b", "c"]
    assert_close(bridge.echo_time("a"), 0.7)
    assert_close(bridge.echo_time("b"), 0.7)
    assert_close(bridge.echo_time("c"), 1.1)  # 0.4 s of audio from an empty buffer
    (clear,) = report.clears
    assert_close(clear.time, 0.7)
    assert clear.bytes_dropped == len(a) + len(b) - 4000 and clear.marks_flushed == ("a", "b")
    assert [m.echoed_by for m in report.marks] == ["clear", "clear", "playout"]
    assert report.received_audio() == a + b + c
    assert report.played_audio() == a[:4000] + c
    assert len(report.played_audio()) == len(report.received_audio()) - report.dropped_bytes
    assert [ans.cleared for ans in report.answers] == [True, False]


async def test_audio_after_a_clear_is_kept_per_chunk(autojump_clock: MockClock) -> None:
    """Media arriving after a clear (stale or new) is recorded with its bytes until the next mark."""
    clip = tone(24000, 5)

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.send_media(clip[:8000])
        await bridge.sleep_until(0.5)
        await bridge.send_clear()
        await bridge.send_media(clip[8000:9600])  # a late delta of the cancelled answer
        await bridge.send_mark("late")
        await bridge.send_media(tone(1600, 9))  # after the mark: outside the window
        await bridge.sleep_until(1.0)
        await bridge.stream.aclose(1000)

    report, _ = await run_call(scenario(), script)
    (clear,) = report.clears
    assert clear.bytes_before_next_mark == 1600 and clear.chunks_before_next_mark == [1]
    assert [c.clears_before for c in report.received] == [0, 1, 1]
    assert report.bytes_after_clear_matching(clip) == 1600
    assert clear.bytes_dropped == 8000 - 3200


async def test_played_ms_follows_the_caller_playout_clock(autojump_clock: MockClock) -> None:
    """`played_ms_at` tells what had really been played at a moment."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.send_media(tone(8000))
        await bridge.sleep_until(1.5)
        await bridge.stream.aclose(1000)

    report, _ = await run_call(scenario(), script)
    assert report.played_ms_at(0.05) == 0
    assert report.played_ms_at(0.6) == 500
    assert report.played_ms_at(0.6, since=0.35) == 250
    assert report.played_ms_at(5.0) == 1000


async def test_audio_still_buffered_when_the_bridge_hangs_up_was_never_heard(autojump_clock: MockClock) -> None:
    """Closing mid-playout cuts the played audio at the close."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.send_media(tone(16000))
        await bridge.send_mark("end")
        await bridge.sleep_until(0.6)
        await bridge.stream.aclose(1000, "bye")

    report, _ = await run_call(scenario(), script)
    assert report.ended_by == "bridge" and (report.close_code, report.close_reason) == (1000, "bye")
    assert_close(report.end_time, 0.6)
    assert len(report.played_audio()) == 4000
    assert report.marks[0].time_echoed is None


async def test_say_streams_exactly_the_clip_bytes(autojump_clock: MockClock) -> None:
    """A `say` step sends the clip in 160-byte frames, the last padded with µ-law silence."""
    clip = load_clip("c_yes").audio

    async def script(bridge: FakeBridge) -> None:
        steps = bridge.caller.report.steps
        await bridge.wait_for(lambda: steps and steps[0].last_chunk is not None)
        await bridge.sleep_until(bridge.now() + 0.1)
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario('[[caller]]\nwait = "time"\nms = 100\nsay = "c_yes"\n'), script)
    (step,) = report.steps
    assert_close(step.action_time, 0.1)
    assert step.first_chunk is not None and step.last_chunk is not None
    assert 0 <= step.first_chunk * 0.02 - step.action_time <= 0.02
    frames = [e.payload for _, e, _ in bridge.media()]
    speech = b"".join(frames[step.first_chunk - 1 : step.last_chunk])
    pad = (-len(clip)) % 160
    assert speech == clip + b"\xff" * pad
    assert all(f == SILENCE for f in frames[: step.first_chunk - 1] + frames[step.last_chunk :])
    assert report.speech_bytes_sent == len(clip)
    assert_close(step.speech_end, step.last_chunk * 0.02)


async def test_heard_waits_for_playout_then_quiet(autojump_clock: MockClock) -> None:
    """`heard` fires `ms` after all audio has played; audio arriving in the quiet restarts it."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.send_media(tone(8000))  # plays 0.1 .. 1.1
        await bridge.sleep_until(1.3)
        await bridge.send_media(tone(1600))  # plays 1.3 .. 1.5, quiet until 2.0
        await bridge.wait_for(lambda: bridge.caller.report.steps)
        await bridge.sleep_until(3.0)
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario('[[caller]]\nwait = "heard"\nms = 500\nsay = "c_yes"\n'), script)
    assert_close(report.steps[0].action_time, 2.0)
    first_speech = next(t for t, e, _ in bridge.media() if e.payload != SILENCE)
    assert 2.0 - 1e-9 <= first_speech <= 2.02 + 1e-9  # the next frame at or after the action


async def test_heard_needs_new_audio_since_the_previous_step(autojump_clock: MockClock) -> None:
    """A second `heard` step does not fire on audio that was heard before the previous step."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.send_media(tone(4000))  # heard by step 0 at 0.6 + 0.3
        await bridge.sleep_until(3.0)
        await bridge.send_media(tone(800))  # plays 3.0 .. 3.1; step 1 at 3.4
        await bridge.sleep_until(4.0)
        await bridge.stream.aclose(1000)

    steps = '[[caller]]\nwait = "heard"\nms = 300\nsilence = true\n\n[[caller]]\nwait = "heard"\nms = 300\ndtmf = "2"\n'
    report, _ = await run_call(scenario(steps), script)
    assert [round(s.action_time, 6) for s in report.steps] == [0.9, 3.4]


async def test_playing_counts_only_the_current_answer(autojump_clock: MockClock) -> None:
    """`playing` fires after `ms` of the answer now playing; a cleared answer does not count."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.2)
        await bridge.send_media(tone(8000))  # 0.2 .. 1.2
        await bridge.sleep_until(0.9)
        await bridge.send_clear()  # 0.7 s played: not enough
        await bridge.sleep_until(1.0)
        await bridge.send_media(tone(24000))  # new answer from 1.0: 1.2 s in at 2.2
        await bridge.wait_for(lambda: bridge.caller.report.steps)
        await bridge.sleep_until(2.5)
        await bridge.stream.aclose(1000)

    report, _ = await run_call(scenario('[[caller]]\nwait = "playing"\nms = 1200\nsay = "c_wait"\n'), script)
    assert_close(report.steps[0].action_time, 2.2)
    assert len(report.answers) == 2


async def test_dtmf_step_sends_a_dtmf_event(autojump_clock: MockClock) -> None:
    """A `dtmf` step sends Twilio's dtmf event on the inbound track, in sequence."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.wait_for(lambda: any(isinstance(e, tm.Dtmf) for _, e, _ in bridge.events))
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario('[[caller]]\nwait = "time"\nms = 210\ndtmf = "5"\n'), script)
    i, (t, ev, raw) = next((i, x) for i, x in enumerate(bridge.events) if isinstance(x[1], tm.Dtmf))
    assert ev == tm.Dtmf(report.stream_sid, "5") and raw["dtmf"]["track"] == "inbound_track"
    assert_close(t, 0.21)
    assert int(raw["sequenceNumber"]) == int(bridge.events[i - 1][2]["sequenceNumber"]) + 1
    assert [(d.digit, d.sequence) for d in report.dtmf] == [("5", int(raw["sequenceNumber"]))]


async def test_hangup_sends_stop_then_closes_with_1000(autojump_clock: MockClock) -> None:
    """A `hangup` step sends `stop` with the call's SIDs and closes the socket normally."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.wait_for(lambda: bridge.closed)

    report, bridge = await run_call(scenario('[[caller]]\nwait = "time"\nms = 300\nhangup = true\n'), script)
    t, stop, raw = bridge.events[-1]
    assert stop == tm.Stop(report.stream_sid, report.call_sid)
    assert raw["stop"] == {"accountSid": report.account_sid, "callSid": report.call_sid}
    assert_close(t, 0.3)
    assert bridge.closed is not None and bridge.closed.code == 1000
    assert report.ended_by == "caller" and report.stop_sent and report.steps[0].sequence == int(raw["sequenceNumber"])


async def test_caller_gives_up_after_max_s(autojump_clock: MockClock) -> None:
    """If the bridge never ends the stream, the caller hangs up at `max_s` and says so."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.wait_for(lambda: bridge.closed, timeout_s=60)

    report, bridge = await run_call(scenario("", max_s=2), script)
    assert report.ended_by == "timeout" and report.stop_sent
    assert isinstance(bridge.events[-1][1], tm.Stop)
    assert_close(bridge.events[-1][0], 2.0)
    assert bridge.closed is not None and bridge.closed.code == 1000


async def test_malformed_frame_fails_the_stream(autojump_clock: MockClock) -> None:
    """A frame Twilio cannot parse is recorded and the stream is closed with 1002."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.stream.send('{"event":"media","streamSid":"' + bridge.sid + '","media":{"payload":"@@@"}}')
        await bridge.wait_for(lambda: bridge.closed)

    report, bridge = await run_call(scenario(), script)
    assert report.ended_by == "protocol_error" and report.close_code == 1002
    assert bridge.closed is not None and bridge.closed.code == 1002
    (err,) = report.protocol_errors
    assert "base64" in err.message and "@@@" not in err.message
    assert report.stop_sent is False


async def test_frames_for_another_stream_are_errors(autojump_clock: MockClock) -> None:
    """A frame with the wrong streamSid or an unknown event is a protocol error; 'record' keeps the call."""

    async def script(bridge: FakeBridge) -> None:
        await bridge.sleep_until(0.1)
        await bridge.stream.send(tm.mark(new_sid("MZ"), "x"))
        await bridge.stream.send(json.dumps({"event": "play", "streamSid": bridge.sid}))
        await bridge.send_mark("ok")
        await bridge.wait_echo("ok")
        await bridge.stream.aclose(1000)

    report, bridge = await run_call(scenario(), script, on_protocol_error="record")
    assert len(report.protocol_errors) == 2 and bridge.echoes() == ["ok"]
    assert "streamSid" in report.protocol_errors[0].message and "play" in report.protocol_errors[1].message
    assert report.ended_by == "bridge"


def test_sids_are_generated_or_checked() -> None:
    """Generated SIDs look like Twilio's; malformed ones and assistant clips are refused."""
    caller = TwilioCaller(scenario())
    for sid, prefix in ((caller.call_sid, "CA"), (caller.stream_sid, "MZ"), (caller.account_sid, "AC")):
        assert re.fullmatch(prefix + "[0-9a-f]{32}", sid)
    with pytest.raises(ValueError, match="CA SID"):
        TwilioCaller(scenario(), call_sid="CA123")
    with pytest.raises(ValueError, match="not a caller clip"):
        TwilioCaller(scenario('[[caller]]\nwait = "time"\nsay = "a_greeting"\n'))
    with pytest.raises(KeyError, match="no clip named"):
        TwilioCaller(scenario('[[caller]]\nwait = "time"\nsay = "c_nonexistent"\n'))


# -- the whole call over loopback: HTTP webhooks + a real WebSocket ---------------------------


class StandIn:
    """A minimal bridge on hypercorn + quart-trio that checks Twilio's signatures like the real one."""

    def __init__(
        self, *, stream_url: str = "wss://voice.example.com/media-stream", refuse_ws: bool = False, public: str = PUBLIC
    ) -> None:
        self.validator = RequestValidator(TOKEN)
        self.public = public
        self.stream_url = stream_url
        self.refuse_ws = refuse_ws
        self.forms: dict[str, list[dict[str, str]]] = {"incoming": [], "action": []}
        self.ws_attempts = 0
        self.start: tm.Start | None = None
        self.media_in: list[tm.Media] = []
        self.echoes: list[str] = []
        self.app = self._make_app()

    def _signed(self, path: str, form: dict[str, str]) -> bool:
        return bool(self.validator.validate(self.public + path, form, request.headers.get("X-Twilio-Signature", "")))

    def _make_app(self) -> QuartTrio:
        app = QuartTrio("standin")

        @app.post("/incoming-call")
        async def incoming_call() -> Response:
            form = (await request.form).to_dict()
            if not self._signed("/incoming-call", form):
                abort(403)
            self.forms["incoming"].append(form)
            vr = VoiceResponse()
            stream = vr.connect(action=self.public + "/stream-ended").stream(url=self.stream_url)
            stream.parameter(name="token", value="tok-" + form["CallSid"][-6:])
            stream.parameter(name="from", value=form["From"])
            return Response(str(vr), content_type="text/xml")

        @app.websocket("/media-stream")
        async def media_stream() -> None:
            self.ws_attempts += 1
            signature = websocket.headers.get("x-twilio-signature", "")
            if self.refuse_ws or not self.validator.validate(self.stream_url, {}, signature):
                abort(403)
            await websocket.accept()
            with trio.fail_after(10):
                assert isinstance(tm.parse_twilio(await websocket.receive()), tm.Connected)
                start = tm.parse_twilio(await websocket.receive())
                assert isinstance(start, tm.Start)
                self.start = start
                while len(self.media_in) < 5:
                    event = tm.parse_twilio(await websocket.receive())
                    if isinstance(event, tm.Media):
                        self.media_in.append(event)
                await websocket.send(tm.media(start.stream_sid, base64.b64encode(b"\x10" * 400).decode()))
                await websocket.send(tm.mark(start.stream_sid, "m1"))
                while not self.echoes:
                    event = tm.parse_twilio(await websocket.receive())
                    if isinstance(event, tm.MarkEcho):
                        self.echoes.append(event.name)
            await websocket.close(1000)

        @app.post("/stream-ended")
        async def stream_ended() -> Response:
            form = (await request.form).to_dict()
            if not self._signed("/stream-ended", form):
                abort(403)
            self.forms["action"].append(form)
            vr = VoiceResponse()
            vr.say("Thanks for calling.")
            vr.hangup()
            return Response(str(vr), content_type="text/xml")

        return app


async def with_standin(standin: StandIn, body: Callable[[str], Awaitable[None]]) -> None:
    """Serve `standin` on 127.0.0.1 (ephemeral port) while `body(base_url)` runs; then stop it."""
    config = HyperConfig()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, standin.app, config, shutdown_trigger=stop.wait))
            try:
                await body(binds[0])
            finally:
                stop.set()


async def test_place_call_runs_a_signed_call_end_to_end() -> None:
    """Webhook, stream upgrade and action are signed as Twilio signs them; the TwiML is followed."""
    standin = StandIn()
    results = []

    async def body(base_url: str) -> None:
        results.append(await place_call(base_url, scenario(max_s=10), public_url=PUBLIC, auth_token=TOKEN))

    await with_standin(standin, body)
    (result,) = results
    assert result.incoming_status == 200 and result.stream_refused is None and result.stream_error is None
    assert result.stream_url == "wss://voice.example.com/media-stream"
    (incoming,) = standin.forms["incoming"]
    assert incoming["CallStatus"] == "ringing" and incoming["ApiVersion"] == "2010-04-01"
    assert incoming["CallSid"] == result.call_sid and incoming["Direction"] == "inbound"
    assert standin.start is not None and standin.start.call_sid == result.call_sid
    assert standin.start.custom_parameters == {"token": "tok-" + result.call_sid[-6:], "from": "+15551230001"}
    assert len(standin.media_in) == 5 and all(m.payload == SILENCE for m in standin.media_in)
    assert standin.echoes == ["m1"]
    report = result.report
    assert report is not None and report.ended_by == "bridge" and report.close_code == 1000
    assert report.received_audio() == b"\x10" * 400 and report.marks[0].echoed_by == "playout"
    (action,) = standin.forms["action"]
    assert action["CallStatus"] == "in-progress" and action["CallSid"] == result.call_sid
    assert result.action is not None and result.action.status == 200
    assert [type(v) for v in result.executed] == [twiml.Connect, twiml.Say, twiml.Hangup]
    assert result.outcome == "hangup" and result.errors == []


async def test_place_call_with_the_wrong_token_is_refused() -> None:
    """A webhook signed with another token gets the bridge's 403 and no stream."""
    standin = StandIn()
    results = []

    async def body(base_url: str) -> None:
        results.append(await place_call(base_url, scenario(max_s=10), public_url=PUBLIC, auth_token="other-token"))

    await with_standin(standin, body)
    (result,) = results
    assert result.incoming_status == 403 and result.report is None and result.outcome == "error"
    assert standin.ws_attempts == 0


async def test_refused_stream_upgrade_is_reported() -> None:
    """A WebSocket upgrade the bridge refuses is reported with its HTTP status; Twilio moves on."""
    standin = StandIn(refuse_ws=True)
    results = []

    async def body(base_url: str) -> None:
        results.append(await place_call(base_url, scenario(max_s=10), public_url=PUBLIC, auth_token=TOKEN))

    await with_standin(standin, body)
    (result,) = results
    assert result.stream_refused == 403 and result.report is None and standin.ws_attempts == 1
    assert result.outcome == "hangup" and len(standin.forms["action"]) == 1


async def test_stream_url_with_a_query_string_is_rejected() -> None:
    """Twilio requires a wss:// stream URL without a query string; no socket is opened otherwise."""
    for url, expected in (("wss://voice.example.com/media-stream?token=1", "query string"),
                          ("ws://voice.example.com/media-stream", "wss")):
        standin = StandIn(stream_url=url)
        results = []

        async def body(base_url: str, results: list[Any] = results) -> None:
            results.append(await place_call(base_url, scenario(max_s=10), public_url=PUBLIC, auth_token=TOKEN))

        await with_standin(standin, body)
        (result,) = results
        assert result.stream_error is not None and expected in result.stream_error
        assert standin.ws_attempts == 0 and result.report is None


async def test_place_call_only_calls_loopback() -> None:
    """A base URL off loopback is refused before anything is sent."""
    with pytest.raises(ValueError, match="loopback"):
        await place_call("http://10.0.0.1:8080", scenario(), public_url=PUBLIC, auth_token=TOKEN)


async def test_plain_http_setup_may_use_a_ws_stream_url() -> None:
    """With an http:// public URL (local only), a ws:// stream URL is followed, and signed as written."""
    standin = StandIn(stream_url="ws://voice.example.com/media-stream", public="http://voice.example.com")
    results = []

    async def body(base_url: str) -> None:
        results.append(await place_call(base_url, scenario(max_s=10), public_url=standin.public, auth_token=TOKEN))

    await with_standin(standin, body)
    (result,) = results
    assert result.stream_error is None and result.report is not None and standin.echoes == ["m1"]
    assert result.outcome == "hangup"
