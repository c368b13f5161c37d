"""VOICEBRIDGE_AUDIO_RECORDING=local: each call's stereo WAV, caller left, what the caller heard right."""

from __future__ import annotations

import array
import wave
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from tests.calls import call_setup, run_in_memory
from tests.test_businesses import LUIGI, PUBLIC, TOKEN, two_businesses
from voicebridge.business import Businesses
from voicebridge.daemon import Daemon, serve_daemon
from voicebridge.ops.store import Store
from voicebridge.peers.demo import free_port
from voicebridge.peers.realtime_server import serve_realtime_peer
from voicebridge.peers.twilio_caller import place_call
from voicebridge.config import Config, ConfigError
from voicebridge.edges import audio
from voicebridge.edges.call_audio import LocalCallAudio, recording_path
from voicebridge.edges.transport import memory_stream_pair
from voicebridge.engine.session import run_call
from voicebridge.peers.clips import load_clip
from voicebridge.peers.realtime_server import RealtimePeer
from voicebridge.peers.scenario import load_scenario
from voicebridge.peers.twilio_caller import CallerReport, TwilioCaller

FRAME = 160  # samples in a 20 ms media frame
LOCAL = frozenset({"local"})


def read_stereo(path: Path) -> tuple[list[int], list[int]]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth(), w.getcomptype()) == (2, 8000, 2, "NONE")
        samples = array.array("h", w.readframes(w.getnframes()))
    return list(samples[0::2]), list(samples[1::2])


def decoded(ulaw: bytes) -> list[int]:
    return list(array.array("h", audio.ulaw_to_pcm16(ulaw)))


def find(track: list[int], part: list[int]) -> int:
    """Where `part` starts in `track` (-1: nowhere)."""
    raw, sub = array.array("h", track).tobytes(), array.array("h", part).tobytes()
    at = raw.find(sub)
    while at >= 0 and at % 2:
        at = raw.find(sub, at + 1)
    return at // 2 if at >= 0 else -1


def greeting_bytes(report: CallerReport, answer: int = 0) -> bytes:
    return b"".join(report.received[i].audio for i in report.answers[answer].chunks)


async def test_a_whole_call_is_recorded_caller_left_heard_audio_right(autojump_clock: MockClock, tmp_path: Path) -> None:
    call = await run_in_memory("full_order", audio_recording=LOCAL, audio_recording_dir=tmp_path)
    path = recording_path(tmp_path, "default", call.report.call_sid)
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [path.name]  # no partial file left
    left, right = read_stereo(path)
    assert len(left) == len(right) >= call.report.media_frames_sent * FRAME
    # LEFT: every clip the caller said, where its frames' timestamps put it.
    said = [s for s in call.report.steps if s.step.say is not None]
    assert said
    for step in said:
        assert step.first_chunk is not None and step.step.say is not None
        clip = decoded(load_clip(step.step.say).audio)
        at = (step.first_chunk - 1) * FRAME
        assert left[at:at + len(clip)] == clip
    assert not any(left[:(said[0].first_chunk or 0) - 1])  # silence before the first word (the caller's 0xFF frames)
    # RIGHT: the greeting as the caller received it, in one piece, when it started playing.
    greeting = decoded(greeting_bytes(call.report))
    at = find(right, greeting)
    assert at >= 0
    assert abs(at - call.report.answers[0].start * 8000) <= 2 * FRAME
    assert not any(right[:at])
    # Everything the caller heard is on the right, nothing more: same amount of sound.
    heard = call.report.played_audio()
    assert sum(1 for s in right if s) == sum(1 for s in decoded(heard) if s)


async def test_a_barge_in_cuts_the_answer_where_the_caller_stopped_hearing_it(autojump_clock: MockClock,
                                                                              tmp_path: Path) -> None:
    call = await run_in_memory("barge_in_greeting", audio_recording=LOCAL, audio_recording_dir=tmp_path)
    (cut,) = call.peer.connections[0].truncates
    _, right = read_stereo(recording_path(tmp_path, "default", call.report.call_sid))
    sent = decoded(greeting_bytes(call.report))
    heard_n = cut.audio_end_ms * 8
    assert any(sent[heard_n + 8:])  # the bridge had sent more than was heard: the cut matters
    at = find(right, sent[:heard_n])
    assert at >= 0
    assert right[at:at + heard_n] == sent[:heard_n]
    # after what was heard (within the truncate's 1 ms rounding), silence until the caller's turn is answered
    assert not any(right[at + heard_n + 8:at + heard_n + 4000])
    assert find(right, sent[heard_n + 8:heard_n + 808]) == -1  # the cleared audio is nowhere


async def test_pcm16_calls_are_recorded_as_the_caller_heard_them(autojump_clock: MockClock, tmp_path: Path) -> None:
    """With the model on PCM16 24 kHz the bridge sends µ-law it made itself: that is what is recorded."""
    call = await run_in_memory("full_order", audio_recording=LOCAL, audio_recording_dir=tmp_path, audio_format="pcm16")
    _, right = read_stereo(recording_path(tmp_path, "default", call.report.call_sid))
    greeting = decoded(greeting_bytes(call.report))
    assert any(greeting) and find(right, greeting) >= 0


@pytest.mark.parametrize("scenario", ["dtmf_transfer", "voice_transfer", "realtime_drop", "silent_caller",
                                      "hangup_mid_answer"])
async def test_every_way_a_call_ends_closes_its_file(autojump_clock: MockClock, tmp_path: Path, scenario: str) -> None:
    call = await run_in_memory(scenario, audio_recording=LOCAL, audio_recording_dir=tmp_path)
    path = recording_path(tmp_path, "default", call.report.call_sid)
    assert [p.name for p in (tmp_path / "default").iterdir()] == [path.name]
    left, right = read_stereo(path)
    assert any(right)  # at least the greeting
    assert abs(len(left) - call.report.media_frames_sent * FRAME) <= 8000  # the whole call, not compressed


async def test_recording_off_writes_nothing(autojump_clock: MockClock, tmp_path: Path) -> None:
    call = await run_in_memory("barge_in_greeting", audio_recording_dir=tmp_path)
    assert call.result.outcome == "caller_hung_up"
    assert list(tmp_path.iterdir()) == []


async def test_a_call_that_drops_still_leaves_a_valid_wav(autojump_clock: MockClock, tmp_path: Path) -> None:
    """The caller's socket vanishes mid-answer (the handler is cancelled): the file is whole and final."""
    scenario = load_scenario("hangup_mid_answer")
    peer = RealtimePeer(scenario)
    setup = call_setup(peer, audio_recording=LOCAL, audio_recording_dir=tmp_path)
    bridge_end, caller_end = memory_stream_pair()
    caller = TwilioCaller(scenario)
    reports: list[CallerReport] = []

    async def phone() -> None:
        reports.append(await caller.run_stream(caller_end, {"From": scenario.from_number, "To": scenario.to_number}))

    from tests.calls import _servers

    server = _servers[id(peer)]
    with trio.fail_after(120):
        async with trio.open_nursery() as peers:
            server.nursery = peers
            async with trio.open_nursery() as nursery:
                nursery.start_soon(phone)
                with trio.move_on_after(3.0):  # the web layer cancels the call: the caller is gone
                    await run_call(bridge_end, setup)
                await caller_end.aclose()
            peers.cancel_scope.cancel()
    path = recording_path(tmp_path, "default", caller.call_sid)
    left, right = read_stereo(path)
    assert 2.9 * 8000 <= len(left) <= 3.1 * 8000
    assert any(right)  # the greeting was heard
    assert not (tmp_path / "default" / f"{caller.call_sid}.local.partial.wav").exists()


async def test_the_daemon_records_each_call_in_its_business_folder(tmp_path: Path) -> None:
    """Through the real daemon on loopback: Luigi's number called, the file is in Luigi's folder."""
    peer = RealtimePeer(load_scenario("dtmf_transfer"))
    recordings = tmp_path / "rec"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
            port = free_port()
            config = Config(host="127.0.0.1", port=port, public_url=PUBLIC, realtime_url=realtime_url,
                            openai_api_key="test-key", twilio_auth_token=TOKEN, db_path=tmp_path / "vb.sqlite3",
                            businesses=(two_businesses(tmp_path / "businesses"),),
                            audio_recording=LOCAL, audio_recording_dir=recordings)
            store = await Store.open(config.db_path)
            try:
                daemon = Daemon(config, businesses=Businesses.load(config), store=store)
                stop = trio.Event()
                await nursery.start(partial(serve_daemon, daemon, shutdown=stop))
                scenario = attrs.evolve(load_scenario("dtmf_transfer"), to_number=LUIGI)
                result = await place_call(f"http://127.0.0.1:{port}", scenario, public_url=PUBLIC, auth_token=TOKEN)
                assert result.outcome == "dial"
                stop.set()
            finally:
                await store.aclose()
            nursery.cancel_scope.cancel()
    assert [p.relative_to(recordings).as_posix() for p in recordings.rglob("*") if p.is_file()] == [
        f"luigis/{result.call_sid}.local.wav"]
    left, right = read_stereo(recordings / "luigis" / f"{result.call_sid}.local.wav")
    assert any(right) and len(left) >= 8000


def test_gaps_between_caller_frames_are_silence_and_cleared_audio_is_taken_out(tmp_path: Path) -> None:
    """The writer alone: a missing second of caller frames stays a second of silence; a `clear` at
    playout position 800 removes the 800 bytes sent after it, though they were placed already."""
    path = tmp_path / "b" / "CA1.local.wav"
    rec = LocalCallAudio(path, t0=100.0)
    speech = bytes(range(0, 160))
    rec.caller_audio(speech, 0, now=100.02)
    rec.caller_hears(0, bytes([0x10]) * 1600, now=100.5)  # 200 ms from 500 ms
    rec.played_to(400, now=100.55)
    rec.cut(800, now=100.6)
    rec.caller_hears(1600, bytes([0x20]) * 160, now=101.0)  # after the clear it plays when sent
    rec.caller_audio(speech, 1020, now=101.04)  # frames 20..1000 ms never came
    assert rec.partial.exists() and not path.exists()
    assert rec.close(heard_to=None, now=101.1) == path
    left, right = read_stereo(path)
    assert left[:160] == decoded(speech) and left[8160:8320] == decoded(speech)
    assert not any(left[160:8160])
    loud = decoded(bytes([0x10]))[0]
    assert right[4000:4800] == [loud] * 800 and not any(right[4800:8000])
    assert right[8000:8160] == decoded(bytes([0x20]) * 160) and not any(right[:4000])


def test_a_killed_process_leaves_a_partial_file_that_plays(tmp_path: Path) -> None:
    """Blocks are written as the call goes, with the header's lengths: the .partial.wav is a WAV."""
    rec = LocalCallAudio(tmp_path / "CA2.local.wav", t0=0.0)
    for i in range(150):  # 3 s of caller audio, no AI audio pending
        rec.caller_audio(bytes([0x30]) * FRAME, i * 20, now=(i + 1) * 0.02)
    rec._file.flush()  # what the OS has when the process dies (no close)
    left, right = read_stereo(rec.partial)
    assert len(left) >= 2 * 8000 and set(left) == {decoded(bytes([0x30]))[0]} and not any(right)
    rec.close(None, 3.0)


def test_audio_whose_echoes_never_come_is_written_after_a_minute_not_held(tmp_path: Path) -> None:
    """A peer that never echoes marks: the call's audio still reaches the file, at most 60 s late."""
    rec = LocalCallAudio(tmp_path / "CA3.local.wav", t0=0.0)
    for i in range(1, 6001):  # two minutes, the AI talking all along, no mark echo ever
        now = i * 0.02
        rec.caller_audio(bytes([0x30]) * FRAME, (i - 1) * 20, now)
        rec.caller_hears((i - 1) * FRAME, bytes([0x40]) * FRAME, now)
    rec._file.flush()
    with wave.open(str(rec.partial), "rb") as w:
        assert 58 * 8000 <= w.getnframes() <= 61 * 8000
    assert rec.close(heard_to=6000 * FRAME, now=120.0) == rec.path
    left, right = read_stereo(rec.path)
    assert len(left) == 6000 * FRAME + FRAME and set(right[FRAME:6000 * FRAME]) == {decoded(bytes([0x40]))[0]}


def test_audio_queued_further_ahead_than_a_minute_is_left_out(tmp_path: Path) -> None:
    rec = LocalCallAudio(tmp_path / "CA4.local.wav", t0=0.0)
    rec.caller_hears(0, bytes([0x40]) * 8000 * 70, now=0.0)  # 70 s of audio in one go: kept
    rec.caller_hears(8000 * 70, bytes([0x50]) * 8000, now=0.0)  # queued to start 70 s ahead: not kept
    rec.close(heard_to=8000 * 71, now=71.0)
    _, right = read_stereo(rec.path)
    assert len(right) == 8000 * 70 and rec.skipped == 8000


@pytest.mark.parametrize("raw,expected", [("", frozenset()), ("local", LOCAL), ("twilio, LOCAL", frozenset({"twilio", "local"}))])
def test_the_setting(raw: str, expected: Any, tmp_path: Path) -> None:
    cfg = Config.from_env({"VOICEBRIDGE_AUDIO_RECORDING": raw, "VOICEBRIDGE_DB": str(tmp_path / "x.sqlite3")}, env_file=None)
    assert cfg.audio_recording == expected
    assert cfg.audio_recording_dir == tmp_path / "recordings"
    assert Config(db_path=tmp_path / "y.sqlite3").audio_recording_dir == tmp_path / "recordings"


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="VOICEBRIDGE_AUDIO_RECORDING: unknown kind mp3"):
        Config.from_env({"VOICEBRIDGE_AUDIO_RECORDING": "local,mp3"}, env_file=None)
