"""The committed speech clips: they match the manifest, are loud, tight, and two voices."""

from __future__ import annotations

import array
import hashlib
import json
import math
import operator
import statistics
from importlib import resources
from pathlib import Path

import pytest

from voicebridge.edges.audio import energy_dbfs, ulaw_to_pcm16
from voicebridge.peers import clips as clip_library
from voicebridge.peers.clips import Clip, ClipLibraryError, all_clips, load_clip

AUDIO = resources.files("voicebridge.peers").joinpath("audio")
MANIFEST: dict[str, dict[str, object]] = json.loads(AUDIO.joinpath("clips.json").read_text(encoding="utf-8"))

ASSISTANT = {
    "a_greeting", "a_added_pepperoni", "a_added_margherita", "a_customer_set", "a_readback",
    "a_confirmed", "a_specials", "a_specials_resume", "a_sorry_go_ahead", "a_still_there",
    "a_goodbye_silence", "a_transfer", "a_changed", "a_what_order", "a_tool_error", "a_goodbye",
    "a_appt_greeting", "a_appt_readback", "a_appt_done",
    "a_es_greeting", "a_es_added_pepperoni", "a_es_readback", "a_es_confirmed",
}  # fmt: skip
CALLER = {
    "c_hello_order", "c_large_pepperoni", "c_medium_margherita", "c_name_pickup", "c_yes",
    "c_change_large", "c_specials", "c_wait", "c_hold_on", "c_person", "c_thats_all",
    "c_book_haircut", "c_move_haircut", "c_cancel",
    "c_es_pepperoni", "c_es_name_pickup", "c_es_yes",
}  # fmt: skip

WINDOW = 800  # 100 ms of 8 kHz µ-law
FRAME = 160  # 20 ms


def test_manifest_lists_exactly_the_scenario_clips_with_their_speakers() -> None:
    """Every clip the scenarios use is there, spoken by the right side, with text."""
    assert {n for n, e in MANIFEST.items() if e["speaker"] == "assistant"} == ASSISTANT
    assert {n for n, e in MANIFEST.items() if e["speaker"] == "caller"} == CALLER
    assert all(isinstance(e["text"], str) and e["text"].strip() for e in MANIFEST.values())


def test_every_clip_file_matches_its_sha256_and_duration() -> None:
    """Each <name>.ulaw hashes to the manifest's sha256 and lasts its duration_ms."""
    for name, entry in MANIFEST.items():
        data = AUDIO.joinpath(f"{name}.ulaw").read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) // 8 == entry["duration_ms"], name


def test_no_stray_audio_files_and_the_library_stays_small() -> None:
    """Only manifest clips ship, under 1 MB in all."""
    files = {p.name for p in AUDIO.iterdir() if p.name.endswith(".ulaw")}
    assert files == {f"{name}.ulaw" for name in MANIFEST}
    assert sum(len(AUDIO.joinpath(f).read_bytes()) for f in files) < 1_000_000


def test_load_clip_returns_the_manifest_entry_with_its_audio() -> None:
    """A loaded clip carries the manifest's speaker and text and the file's bytes."""
    clip = load_clip("c_yes")
    assert (clip.name, clip.speaker, clip.text) == ("c_yes", "caller", MANIFEST["c_yes"]["text"])
    assert clip.audio == AUDIO.joinpath("c_yes.ulaw").read_bytes()
    assert clip.duration_ms == MANIFEST["c_yes"]["duration_ms"]
    assert load_clip("c_yes") is clip  # cached
    assert "bytes>" in repr(clip) and len(repr(clip)) < 200  # audio never dumped into logs


def test_all_clips_is_every_clip_and_a_private_copy() -> None:
    """all_clips() has every manifest clip; changing the dict does not change the library."""
    clips = all_clips()
    assert list(clips) == list(MANIFEST)
    clips.pop("a_greeting")
    assert "a_greeting" in all_clips()


def test_unknown_clip_name_is_a_key_error_naming_the_known_ones() -> None:
    """Asking for a clip that does not exist says so and lists what does."""
    with pytest.raises(KeyError, match=r"no clip named 'c_maybe'; known clips: a_added_margherita"):
        load_clip("c_maybe")


def test_a_clip_file_that_does_not_match_the_manifest_is_refused(tmp_path: Path) -> None:
    """A tampered or truncated clip file is a clear error, not silently played."""
    (tmp_path / "x.ulaw").write_bytes(b"\xff" * 80)
    entry = {"speaker": "caller", "text": "Hi.", "sha256": hashlib.sha256(b"\xff" * 81).hexdigest()}
    with pytest.raises(ClipLibraryError, match="clip 'x': x.ulaw does not match its sha256"):
        clip_library._load(tmp_path, "x", entry)
    with pytest.raises(ClipLibraryError, match="cannot read y.ulaw"):
        clip_library._load(tmp_path, "y", entry)
    with pytest.raises(ClipLibraryError, match="needs speaker, text and sha256"):
        clip_library._load(tmp_path, "x", {"speaker": "caller", "text": "Hi."})


def test_clip_speaker_must_be_assistant_or_caller() -> None:
    """A clip cannot be built for a third party."""
    with pytest.raises(ValueError, match="speaker"):
        Clip("x", "narrator", "Hi.", b"\xff")


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_clip_is_speech_loud_from_start_to_end(name: str) -> None:
    """Most 100 ms windows are far above silence, the level is about -16 dBFS, no padding either end."""
    audio = load_clip(name).audio
    windows = [energy_dbfs(audio[i : i + WINDOW]) for i in range(0, len(audio) - WINDOW + 1, WINDOW)]
    assert len(windows) >= 8  # at least 0.8 s of speech
    assert sum(w > -45.0 for w in windows) >= 0.8 * len(windows)
    active = [w for w in windows if w > -40.0]
    level = 10 * math.log10(sum(10 ** (w / 10) for w in active) / len(active))
    assert -20.0 <= level <= -13.0
    # leading silence trimmed: sound from the first frame, a loud frame within 100 ms
    assert energy_dbfs(audio[:FRAME]) > -60.0
    assert max(energy_dbfs(audio[i : i + FRAME]) for i in range(0, WINDOW, FRAME)) > -30.0
    # trailing silence trimmed: the last 100 ms still carry speech
    assert energy_dbfs(audio[-WINDOW:]) > -50.0


def _pitch_hz(audio: bytes, frames: int = 12) -> float:
    """Median pitch over up to `frames` loud 40 ms frames: normalised autocorrelation peak, 60-400 Hz."""
    pcm = array.array("h", ulaw_to_pcm16(audio)).tolist()
    size = 320
    loud = [i for i in range(0, len(pcm) - size, size) if energy_dbfs(audio[i : i + size]) > -30.0]
    pitches = []
    for start in loud[:: max(1, len(loud) // frames)][:frames]:
        x = pcm[start : start + size]
        best_r, best_lag = 0.0, 0
        for lag in range(8000 // 400, 8000 // 60 + 1):
            a, b = x[: size - lag], x[lag:]
            c = sum(map(operator.mul, a, b))
            if c > 0:
                r = c / math.sqrt(sum(map(operator.mul, a, a)) * sum(map(operator.mul, b, b)))
                if r > best_r:
                    best_r, best_lag = r, lag
        if best_r > 0.6:  # clearly voiced
            pitches.append(8000 / best_lag)
    assert len(pitches) >= 5, "too few voiced frames to measure a pitch"
    return statistics.median(pitches)


def test_assistant_and_caller_voices_differ_in_pitch() -> None:
    """Every assistant clip is pitched well above every caller clip (female vs male voice)."""
    pitch = {name: _pitch_hz(clip.audio) for name, clip in all_clips().items()}
    assistant = [pitch[n] for n in ASSISTANT]
    caller = [pitch[n] for n in CALLER]
    assert min(assistant) > 1.4 * max(caller)
    assert statistics.median(assistant) > 1.6 * statistics.median(caller)
