"""Call recordings: the meta line, times from the stream start, redaction, closes, and strict reading."""

from __future__ import annotations

import gzip
import json
import logging
from functools import partial
from pathlib import Path

import pytest
import trio

from voicebridge.config import Config
from voicebridge.daemon import make_call_setup, realtime_connector
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.jobs.pizza.menu import load_menu
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer
from voicebridge.peers.scenario import parse_scenario
from voicebridge.peers.twilio_caller import TwilioCaller
from voicebridge.edges.protocol import twilio_media as tm
from voicebridge.edges.recording import REDACTED, CallRecorder, read_recording, redact
from voicebridge.engine.session import run_call
from voicebridge.edges.transport import memory_stream_pair

API_KEY = "sk-test-recording-0123456789abcdefghij"
TOKEN = "v1.CAtest.1700000000000.nonce-value.signature-value"
STREAM_SID = "MZ" + "1" * 32
CALL_SID = "CA" + "2" * 32
ACCOUNT_SID = "AC" + "3" * 32


def start_text(token: str = TOKEN) -> str:
    return tm.start(STREAM_SID, CALL_SID, ACCOUNT_SID, {"From": "+15551230001", "token": token})


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_meta_line_first_and_times_counted_from_the_stream_start(tmp_path: Path,
                                                                      autojump_clock: trio.abc.Clock) -> None:
    """Lines before `start` get negative times, later ones the exact seconds since it; meta comes first."""
    path = tmp_path / "call.jsonl"
    recorder = CallRecorder(path, {"call_sid": CALL_SID, "settings": {"silence_timeout_s": 5.0}})
    recorder.add("realtime", "in", '{"type":"rate_limits.updated"}', conn=1)
    await trio.sleep(0.5)
    recorder.add("twilio", "in", start_text())
    recorder.started(trio.current_time())
    await trio.sleep(1.25)
    recorder.add("realtime", "out", '{"type":"response.create"}', conn=1)
    recorder.close()
    meta, early, start, later = lines_of(path)
    assert meta == {"t": 0, "peer": "meta", "dir": "info", "call_sid": CALL_SID, "settings": {"silence_timeout_s": 5.0}}
    assert (early["t"], early["peer"], early["conn"], early["dir"]) == (-0.5, "realtime", 1, "in")
    assert (start["t"], start["msg"]["event"]) == (0.0, "start")
    assert (later["t"], later["msg"]) == (1.25, {"type": "response.create"})


async def test_call_that_never_started_is_written_from_its_first_line(tmp_path: Path,
                                                                       autojump_clock: trio.abc.Clock) -> None:
    """Without a `start`, closing writes every held line in order, timed from the first."""
    path = tmp_path / "call.jsonl"
    recorder = CallRecorder(path, {"call_sid": None})
    recorder.add("twilio", "in", '{"event":"connected"}')
    await trio.sleep(2.0)
    recorder.add("twilio", "close", None, code=1006, by="peer")
    recorder.close()
    assert [(l["t"], l["dir"]) for l in lines_of(path)] == [(0, "info"), (0.0, "in"), (2.0, "close")]


async def test_stream_token_is_redacted_and_the_message_left_untouched(tmp_path: Path) -> None:
    """The single-use token never reaches the file; the caller's own message object is not changed."""
    msg = json.loads(start_text())
    redacted = redact("twilio", "in", msg)
    assert redacted["start"]["customParameters"] == {"From": "+15551230001", "token": REDACTED}
    assert msg["start"]["customParameters"]["token"] == TOKEN
    path = tmp_path / "call.jsonl"
    recorder = CallRecorder(path)
    recorder.add("twilio", "in", start_text())
    recorder.started(0.0)
    recorder.close()
    text = path.read_text(encoding="utf-8")
    assert TOKEN not in text and "nonce-value" not in text and REDACTED in text


async def test_non_json_frame_is_kept_as_raw_text(tmp_path: Path) -> None:
    """A frame that is not JSON is recorded as `raw` (cut at 2000 characters), not dropped."""
    path = tmp_path / "call.jsonl"
    recorder = CallRecorder(path)
    recorder.started(0.0)
    recorder.add("twilio", "in", "not json " + "x" * 3000)
    recorder.close()
    line = lines_of(path)[1]
    assert "msg" not in line and line["raw"].startswith("not json ") and len(line["raw"]) == 2000


async def test_peer_close_and_bridge_close_are_recorded_once_each_way(tmp_path: Path) -> None:
    """Who closed a socket is recorded once: the peer (seen on receive) or the bridge (its own close)."""
    path = tmp_path / "call.jsonl"
    recorder = CallRecorder(path)
    recorder.started(trio.current_time())
    ours, theirs = memory_stream_pair()
    stream = recorder.wrap(ours, "realtime", 1)
    await theirs.send('{"type":"session.updated"}')
    assert await stream.receive() == '{"type":"session.updated"}'
    await theirs.aclose(1006, "gone")
    with pytest.raises(Exception):  # noqa: B017 - whatever the peer's close raises, it is not recorded again
        await stream.receive()
    await stream.aclose()  # the bridge tidies up: already closed by the peer, not recorded again
    ours2, theirs2 = memory_stream_pair()
    stream2 = recorder.wrap(ours2, "twilio")
    await stream2.send('{"event":"clear","streamSid":"MZ1"}')
    await stream2.aclose(1000, "call ended")
    with pytest.raises(Exception):  # noqa: B017 - our own close, whatever the stream raises for it
        await stream2.receive()  # our own close, seen by the reader: not a peer close
    recorder.close()
    assert [(l["peer"], l["dir"], l.get("by"), l.get("code")) for l in lines_of(path)[1:]] == [
        ("realtime", "in", None, None), ("realtime", "close", "peer", 1006),
        ("twilio", "out", None, None), ("twilio", "close", "bridge", 1000)]


class FastStream:
    """A stream with a no-wait send that takes frames only while `open_`."""

    def __init__(self) -> None:
        self.open_ = True
        self.sent: list[str] = []

    def try_send_nowait(self, *texts: str) -> bool:
        if self.open_:
            self.sent += texts
        return self.open_


async def test_no_wait_sends_are_recorded_only_when_they_happen(tmp_path: Path) -> None:
    """Frames the inner stream takes at once are recorded in order; refused ones are not (send records them)."""
    path = tmp_path / "call.jsonl"
    recorder = CallRecorder(path)
    recorder.started(trio.current_time())
    inner = FastStream()
    stream = recorder.wrap(inner, "twilio")  # type: ignore[arg-type]
    assert stream.try_send_nowait('{"event":"media","n":1}', '{"event":"mark","n":1}')
    inner.open_ = False
    assert not stream.try_send_nowait('{"event":"media","n":2}')
    assert not recorder.wrap(object(), "twilio").try_send_nowait('{"event":"clear"}')  # type: ignore[arg-type]
    recorder.close()
    assert [l["msg"] for l in lines_of(path)[1:]] == [{"event": "media", "n": 1}, {"event": "mark", "n": 1}]
    assert inner.sent == ['{"event":"media","n":1}', '{"event":"mark","n":1}']


async def test_write_failure_stops_the_recording_without_raising(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A recording that cannot be written (here: its folder is a file) never breaks the call."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    recorder = CallRecorder(blocker / "call.jsonl")
    recorder.started(0.0)
    with caplog.at_level(logging.WARNING, logger="voicebridge.edges.recording"):
        recorder.add("twilio", "in", start_text())
        recorder.add("twilio", "out", '{"event":"clear"}')
        recorder.close()
    assert [r.getMessage() for r in caplog.records] == ["call recording stopped: FileExistsError"]
    assert not (blocker / "call.jsonl").exists()


SHORT = """
name = "short"
max_s = 20

[[caller]]
wait = "playing"
ms = 600
hangup = true

[assistant.on_purpose]
greeting = { say = "a_greeting" }
"""


async def test_recorded_call_holds_messages_but_never_the_key_or_the_token(tmp_path: Path) -> None:
    """A real call over loopback, recorded: both sockets' messages, no API key, no stream token."""
    scenario = parse_scenario(SHORT, "short.toml")
    peer = RealtimePeer(scenario, speed=4.0, api_key=API_KEY)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_realtime_peer, peer))
            config = Config(openai_api_key=API_KEY, realtime_url=url, record_dir=tmp_path / "rec",
                            silence_timeout_s=7.0)
            setup = make_call_setup(config, PizzaJob(load_menu(None)), realtime_connector(config))
            bridge_end, caller_end = memory_stream_pair()
            caller = TwilioCaller(scenario, call_sid=CALL_SID, stream_sid=STREAM_SID, account_sid=ACCOUNT_SID)
            result: dict[str, object] = {}

            async def bridge() -> None:
                result["call"] = await run_call(bridge_end, setup)

            nursery.start_soon(bridge)
            report = await caller.run_stream(caller_end, {"From": "+15551230001", "token": TOKEN})
            while "call" not in result:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert report.stop_sent and peer.connections[0].header_names.count("authorization") == 1
    [path] = list((tmp_path / "rec").glob(f"{CALL_SID}-*.jsonl"))
    raw = path.read_bytes()
    assert API_KEY.encode() not in raw and b"sk-test" not in raw
    assert TOKEN.encode() not in raw and REDACTED.encode() in raw
    lines = list(read_recording(path))
    meta = lines[0]
    assert (meta["peer"], meta["call_sid"], meta["settings"]["silence_timeout_s"]) == ("meta", CALL_SID, 7.0)
    assert meta["settings"]["audio_format"] == "pcmu"
    start = lines[1]
    assert start["msg"]["event"] == "start" and -0.05 < start["t"] <= 0
    assert all(l["t"] >= -0.05 for l in lines[1:])
    kinds = {(l["peer"], l.get("conn"), l["dir"]) for l in lines[1:]}
    assert {("twilio", None, "in"), ("twilio", None, "out"), ("realtime", 1, "in"), ("realtime", 1, "out")} <= kinds
    assert any(l.get("msg", {}).get("type") == "response.output_audio.delta" for l in lines)
    stop = next(l for l in lines if l["peer"] == "twilio" and l.get("msg", {}).get("event") == "stop")
    closes = [(l["peer"], l.get("conn"), l["by"], l["code"]) for l in lines if l["dir"] == "close"]
    assert ("realtime", 1, "bridge", 1000) in closes  # the caller hung up: the bridge closed the model's socket
    assert all(l["t"] >= stop["t"] for l in lines if l["dir"] == "close")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


META = '{"t":0,"peer":"meta","dir":"info","settings":{}}\n'


@pytest.mark.parametrize("body, line, says", [
    (META + '{"t":1,"peer":"twilio","dir":"in","msg":{}}\n{oops\n', 3, "not JSON"),
    (META + '[1, 2]\n', 2, "expected a JSON object"),
    (META + '{"t":1,"peer":"twilio","dir":"in"}\n', 2, "needs 'msg'"),
    (META + '{"t":1,"peer":"twilio","dir":"in","msg":"text"}\n', 2, "'msg' must be a JSON object"),
    (META + '{"t":1,"peer":"realtime","conn":0,"dir":"out","msg":{}}\n', 2, "needs 'conn'"),
    (META + '{"t":1,"peer":"twilio","conn":2,"dir":"out","msg":{}}\n', 2, "has no 'conn'"),
    (META + '{"t":1,"peer":"sip","dir":"out","msg":{}}\n', 2, "unknown peer"),
    (META + '{"t":1,"peer":"twilio","dir":"close","by":"nobody","code":1000}\n', 2, "'by' must be"),
    (META + '{"t":1,"peer":"twilio","dir":"close","code":"1000"}\n', 2, "'code' must be"),
    (META + '{"t":NaN,"peer":"twilio","dir":"in","msg":{}}\n', 2, "'t' must be a number"),
    ('{"t":0,"peer":"twilio","dir":"in","msg":{}}\n', 1, "the first line must be the meta line"),
    (META + META, 2, "a meta line may only be the first line"),
    ('\n\n', 1, "empty recording"),
])
def test_read_recording_names_file_and_line_of_a_malformed_line(tmp_path: Path, body: str, line: int,
                                                                 says: str) -> None:
    """Every kind of malformed line is refused with `file:line: what is wrong`."""
    path = write(tmp_path / "bad.jsonl", body)
    with pytest.raises(ValueError) as caught:
        list(read_recording(path))
    assert str(caught.value).startswith(f"{path}:{line}: ") and says in str(caught.value)


def test_read_recording_reads_gzip_and_plain_alike(tmp_path: Path) -> None:
    """A `.jsonl.gz` reads exactly as the same `.jsonl`; blank lines are skipped."""
    body = META + '\n{"t":0.5,"peer":"realtime","conn":1,"dir":"out","msg":{"type":"response.create"}}\n'
    plain = write(tmp_path / "call.jsonl", body)
    packed = tmp_path / "call.jsonl.gz"
    packed.write_bytes(gzip.compress(body.encode()))
    assert list(read_recording(plain)) == list(read_recording(packed)) == [
        json.loads(META), {"t": 0.5, "peer": "realtime", "conn": 1, "dir": "out", "msg": {"type": "response.create"}}]
