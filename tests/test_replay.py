"""`voicebridge replay`: every shipped recording replays against the real daemon with no difference.

The replays are real calls on the real clock over 127.0.0.1 (10-45 s each), so they all run
at once, in one trio run shared by the tests of this file: the nine fixtures as recorded, and
altered copies of one of them that must each be reported with one difference at the right place.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from voicebridge.cli import main as cli_main
from voicebridge.config import Config
from voicebridge.peers.scenario import scenario_names
from voicebridge.edges.recording import read_recording
from voicebridge.peers.replay import Recording, ReplayReport, load_recording, render_json, replay_all

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOLERANCE_S = 0.25
ALTERED_FROM = "barge_in_greeting"  # short, and it has a barge-in: a clear, a truncate, marks and speech
OUTCOMES = {
    "full_order": "completed", "demo": "completed", "change_of_mind": "completed", "realtime_drop": "completed",
    "barge_in_greeting": "caller_hung_up", "hangup_mid_answer": "caller_hung_up",
    "barge_in_twice": "ended_no_order", "silent_caller": "silence_timeout", "dtmf_transfer": "transferred",
    "voice_transfer": "transferred",
    "appointments": "completed", "appointment_keypad": "completed", "spanish_order": "completed",
}
# What Twilio is told after the stream, by outcome (the replay daemon has no TRANSFER_NUMBER).
TWIML = {"completed": ["Hangup"], "caller_hung_up": ["Hangup"], "ended_no_order": ["Hangup"],
         "silence_timeout": ["Hangup"],
         # replays run without TRANSFER_NUMBER: a transfer then offers voicemail (apology, invitation, <Record>)
         "transferred": ["Say", "Say", "Record", "Hangup"]}


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.jsonl.gz"


def bridge_index(lines: list[dict[str, Any]], at: int) -> int:
    """Index of line `at` among the bridge's messages on the same socket."""
    target = lines[at]
    return sum(1 for line in lines[:at] if line["dir"] == "out" and line["peer"] == target["peer"]
               and line.get("conn") == target.get("conn"))


def find(lines: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> int:
    return next(n for n, line in enumerate(lines) if test(line))


def is_speech_append(line: dict[str, Any]) -> bool:
    msg = line.get("msg") or {}
    return (line["dir"] == "out" and msg.get("type") == "input_audio_buffer.append"
            and set(base64.b64decode(msg["audio"])) != {0xFF})


class Altered:
    """Copies of one recording, each changed in one place, and where the replay must find it."""

    def __init__(self, recording: Recording) -> None:
        self.base = recording
        self.lines = list(recording.lines)
        self.variants: dict[str, tuple[Recording, str, int]] = {}  # name -> (recording, socket, index)

    def add(self, name: str, at: int, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        lines = copy.deepcopy(self.lines)
        socket = "twilio" if lines[at]["peer"] == "twilio" else f"realtime#{lines[at]['conn']}"
        index = bridge_index(lines, at)
        new = change(lines[at])
        if new is None:
            del lines[at]
        else:
            lines[at] = new
        self.variants[name] = (self.base.with_lines(lines), socket, index)


def altered_variants() -> Altered:
    altered = Altered(load_recording(fixture_path(ALTERED_FROM)))
    lines = altered.lines
    clear = find(lines, lambda l: l["dir"] == "out" and (l.get("msg") or {}).get("event") == "clear")
    altered.add("clear_removed", clear, lambda line: None)

    def flip_byte(line: dict[str, Any]) -> dict[str, Any]:
        audio = bytearray(base64.b64decode(line["msg"]["audio"]))
        audio[17] ^= 0x01
        line["msg"]["audio"] = base64.b64encode(bytes(audio)).decode()
        return line

    altered.add("audio_byte", find(lines, is_speech_append), flip_byte)
    marks = [n for n, l in enumerate(lines) if l["dir"] == "out" and (l.get("msg") or {}).get("event") == "mark"]

    def rename(line: dict[str, Any]) -> dict[str, Any]:
        line["msg"]["mark"]["name"] += "0"
        return line

    altered.add("mark_name", marks[3], rename)

    def later(line: dict[str, Any]) -> dict[str, Any]:
        line["t"] = round(line["t"] + 1.0, 4)
        return line

    altered.add("mark_late", marks[len(marks) // 2], later)
    truncate = find(lines, lambda l: (l.get("msg") or {}).get("type") == "conversation.item.truncate")

    def heard_more(line: dict[str, Any]) -> dict[str, Any]:
        line["msg"]["audio_end_ms"] += 1000
        return line

    altered.add("truncate_far", truncate, heard_more)
    return altered


@pytest.fixture(scope="module")
def replays() -> dict[str, ReplayReport]:
    """Every fixture and every altered copy, replayed at once (about 45 s of real time)."""
    names = sorted(OUTCOMES)
    recordings = [load_recording(fixture_path(n)) for n in names]
    altered = altered_variants()
    variant_names = list(altered.variants)
    recordings += [altered.variants[v][0] for v in variant_names]

    async def run() -> list[ReplayReport]:
        with trio.fail_after(120):
            return await replay_all(recordings, Config(), tolerance_s=TOLERANCE_S)

    reports = trio.run(run)
    return dict(zip(names + [f"altered:{v}" for v in variant_names], reports))


@pytest.fixture(scope="module")
def altered() -> Altered:
    return altered_variants()


def test_every_packaged_scenario_has_a_fixture() -> None:
    """One recording is shipped per packaged scenario, and no other."""
    assert sorted(p.name.removesuffix(".jsonl.gz") for p in FIXTURES.glob("*.jsonl.gz")) == sorted(scenario_names())
    assert sorted(OUTCOMES) == sorted(scenario_names())


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_fixture_replays_with_no_difference(replays: dict[str, ReplayReport], name: str) -> None:
    """The bridge sends today, message by message and byte for byte, what it sent when recorded."""
    report = replays[name]
    lines = list(read_recording(fixture_path(name)))
    out = sum(1 for line in lines if line["dir"] == "out")
    assert report.error is None
    assert [d.line() for d in report.differences] == []
    assert report.ok
    assert out <= report.bridge_messages <= out + 3  # plus the bridge's closes of its sockets
    assert report.connections_replayed == report.connections_recorded == max(
        line.get("conn", 1) for line in lines if line["peer"] == "realtime")
    assert report.max_skew_s <= TOLERANCE_S
    assert report.summary().startswith(f"{name}.jsonl.gz: {report.bridge_messages} bridge messages, 0 differences")


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_replayed_call_ends_with_the_recorded_outcome(replays: dict[str, ReplayReport], name: str) -> None:
    """The daemon ends the replayed call as the scenario did: completed, transferred, silence timeout..."""
    assert replays[name].outcome == OUTCOMES[name]


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_twilio_continues_the_call_according_to_its_outcome(replays: dict[str, ReplayReport], name: str) -> None:
    """The <Connect action> request, made as soon as the stream ends, gets the TwiML for the call's outcome."""
    report = replays[name]
    assert report.twiml == TWIML[OUTCOMES[name]]
    assert report.notes == []


def only_difference(report: ReplayReport) -> Any:
    assert report.error is None
    assert len(report.differences) == 1, [d.line() for d in report.differences]
    return report.differences[0]


def test_removed_clear_is_reported_as_an_extra_message_at_its_index(
        replays: dict[str, ReplayReport], altered: Altered) -> None:
    """A recording without the barge-in's `clear`: the bridge's clear is extra, at the clear's place."""
    _, socket, index = altered.variants["clear_removed"]
    diff = only_difference(replays["altered:clear_removed"])
    assert (diff.socket, diff.index, diff.kind) == (socket, index, "extra") == ("twilio", index, "extra")
    assert diff.message.startswith("clear sent at ") and "is not in the recording" in diff.message


def test_changed_audio_byte_is_reported_at_its_index_and_byte(
        replays: dict[str, ReplayReport], altered: Altered) -> None:
    """One byte of forwarded caller audio changed in the recording: a content difference naming the byte."""
    recording, socket, index = altered.variants["audio_byte"]
    diff = only_difference(replays["altered:audio_byte"])
    assert (diff.socket, diff.index, diff.kind) == (socket, index, "content")
    assert socket == "realtime#1"
    assert "input_audio_buffer.append (160 bytes): audio: audio differs at byte 17 of 160" in diff.message
    changed = [l for l in recording.lines if is_speech_append(l)][0]["msg"]["audio"]
    text = replays["altered:audio_byte"].text()
    assert changed not in text and changed[:40] not in text  # never a whole payload, nor a piece of one


def test_altered_mark_name_is_reported_with_both_names(replays: dict[str, ReplayReport], altered: Altered) -> None:
    """A mark renamed in the recording: the difference shows the recorded and the sent name."""
    recording, socket, index = altered.variants["mark_name"]
    diff = only_difference(replays["altered:mark_name"])
    assert (diff.socket, diff.index, diff.kind) == ("twilio", index, "content")
    outs = [l for l in recording.lines if l["peer"] == "twilio" and l["dir"] == "out"]
    name = outs[index]["msg"]["mark"]["name"]
    assert diff.message == f"mark {name!r}: mark.name: expected {json.dumps(name)}, got {json.dumps(name[:-1])}"


def test_message_far_from_its_recorded_time_is_a_timing_difference(
        replays: dict[str, ReplayReport], altered: Altered) -> None:
    """A mark recorded 1 s later than the bridge now sends it is reported as timing, with both times."""
    _, socket, index = altered.variants["mark_late"]
    diff = only_difference(replays["altered:mark_late"])
    assert (diff.socket, diff.index, diff.kind) == ("twilio", index, "timing")
    assert diff.t_expected is not None and diff.t_got is not None
    assert 0.75 < diff.t_expected - diff.t_got < 1.25
    assert "tolerance 0.25 s" in diff.message


def test_truncation_point_far_from_the_recorded_one_is_a_timing_difference(
        replays: dict[str, ReplayReport], altered: Altered) -> None:
    """`audio_end_ms` (what the caller had heard) 1000 ms off the recording is reported; jitter is not."""
    _, socket, index = altered.variants["truncate_far"]
    diff = only_difference(replays["altered:truncate_far"])
    assert (diff.socket, diff.index, diff.kind) == ("realtime#1", index, "timing")
    assert "audio_end_ms" in diff.message and "more than 250 ms apart" in diff.message


def test_json_report_lists_every_file_and_difference(replays: dict[str, ReplayReport]) -> None:
    """`--json` output: per file, the counts, the outcome and each difference with socket and index."""
    reports = [replays["full_order"], replays["altered:mark_name"]]
    data = json.loads(json.dumps(render_json(reports, TOLERANCE_S)))
    assert data["ok"] is False and data["differences"] == 1
    clean, changed = data["files"]
    assert clean["file"] == "full_order.jsonl.gz" and clean["ok"] is True and clean["differences"] == []
    assert clean["bridge_messages"] == replays["full_order"].bridge_messages and clean["outcome"] == "completed"
    assert changed["ok"] is False
    assert [(d["socket"], d["kind"]) for d in changed["differences"]] == [("twilio", "content")]
    assert isinstance(changed["differences"][0]["index"], int)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


META = '{"t":0,"peer":"meta","dir":"info","version":"0.1.0","call_sid":"CA1","settings":{}}'
START = ('{"t":0,"peer":"twilio","dir":"in","msg":{"event":"start","start":{"callSid":"CA1","streamSid":"MZ1",'
         '"accountSid":"AC1","customParameters":{"token":"<redacted>"}}}}')


@pytest.mark.parametrize("lines, where, says", [
    ([META, START, '{"t":1,"peer":"twilio","dir":"out",'], 3, "not JSON"),
    ([META, START, '{"t":1,"peer":"realtime","dir":"in","msg":{}}'], 3, "needs 'conn'"),
    ([START, META], 1, "the first line must be the meta line"),
    ([META, START, '{"peer":"twilio","dir":"in","msg":{}}'], 3, "missing 't'"),
    ([META, START, '{"t":"soon","peer":"twilio","dir":"in","msg":{}}'], 3, "'t' must be a number"),
    ([META, START, '{"t":1,"peer":"twilio","dir":"sideways","msg":{}}'], 3, "unknown dir"),
    ([META, START, META], 3, "a meta line may only be the first line"),
    (['{"t":0,"peer":"meta","dir":"info","settings":{"silence_timeout_s":-5}}', START], 1,
     "settings.silence_timeout_s"),
    ([META, '{"t":1,"peer":"twilio","dir":"out","msg":{"event":"clear"}}'], 2, "no Twilio 'start'"),
    ([], 1, "empty recording"),
])
def test_malformed_recording_gives_one_error_line_naming_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], where: int, says: str) -> None:
    """A bad recording stops `voicebridge replay` before any call, with one line `file:line: what`, exit 2."""
    path = write_lines(tmp_path / "bad.jsonl", lines)
    assert cli_main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"voicebridge replay: {path}:{where}: ") and says in err[0]


def test_unreadable_recordings_are_reported_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt gzip and a missing file are each one clear line; nothing is replayed; exit 2."""
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(META.encode())[:-12] + b"garbage!")
    missing = tmp_path / "missing.jsonl"
    assert cli_main(["replay", str(broken), str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"voicebridge replay: {broken}:") and "cannot read" in err[0]
    assert err[1].startswith(f"voicebridge replay: {missing}: cannot read")
