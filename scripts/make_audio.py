#!/usr/bin/env python3
"""Regenerate the peers' speech clips from voicebridge/peers/audio/clips.json.

Each entry is spoken with espeak-ng (the assistant and the caller have different voices),
piped through sox to 8 kHz mono 16-bit, trimmed of leading and trailing silence, set to an
active speech level of about -16 dBFS (never closer than 1 dB to clipping), and encoded by
sox to raw G.711 µ-law without a header: `<name>.ulaw` beside the manifest. The manifest
then records each clip's `duration_ms` and `sha256`.

Needs espeak-ng and sox on PATH (Debian: `apt-get install espeak-ng sox`); the package and
the tests never do, because the .ulaw files are committed.

    python scripts/make_audio.py              # every clip
    python scripts/make_audio.py c_yes c_wait # only these
"""

from __future__ import annotations

import argparse
import array
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

AUDIO_DIR = Path(__file__).resolve().parent.parent / "voicebridge" / "peers" / "audio"
MANIFEST = AUDIO_DIR / "clips.json"

VOICES: dict[str, list[str]] = {
    "assistant": ["-v", "en-us+f3", "-s", "170"],
    "caller": ["-v", "en-us+m3", "-s", "160"],
}
# A clip's optional "language" (default "en") picks the espeak-ng voice: the same two speakers' variants.
LANGUAGE_VOICES = {"en": "en-us", "es": "es"}
RATE = 8000
TARGET_DBFS = -16.0  # active speech level
PEAK_CEILING_DBFS = -1.0  # the gain never pushes a peak above this
ACTIVE_BELOW_LOUDEST_DB = 30.0  # 20 ms frames this far under the loudest one count as pauses
TRIM_THRESHOLD = "0.3%"  # sox `silence` threshold (about -50 dBFS) for leading/trailing trim
TOOL_TIMEOUT_S = 60.0
MAX_TOTAL_BYTES = 1_000_000

PCM_ARGS = ["-t", "raw", "-r", str(RATE), "-c", "1", "-e", "signed-integer", "-b", "16", "-L"]
ULAW_ARGS = ["-t", "raw", "-r", str(RATE), "-c", "1", "-e", "u-law"]


class MakeAudioError(Exception):
    """A tool is missing, failed, or the manifest is malformed."""


def run(cmd: list[str], data: bytes | None = None) -> bytes:
    """Run one tool with `data` on stdin and return its stdout; raise on failure."""
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise MakeAudioError(f"{cmd[0]} took longer than {TOOL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise MakeAudioError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def speak(text: str, speaker: str, language: str = "en") -> bytes:
    """espeak-ng WAV piped through sox: trimmed 8 kHz mono little-endian PCM16."""
    args = list(VOICES[speaker])
    args[1] = args[1].replace("en-us", LANGUAGE_VOICES[language], 1)
    wav = run(["espeak-ng", *args, "--stdout", text])
    trim = ["silence", "1", "0.01", TRIM_THRESHOLD]
    return run(["sox", "-D", "-t", "wav", "-", *PCM_ARGS, "-", *trim, "reverse", *trim, "reverse"], wav)


def levels(pcm: bytes) -> tuple[float, float]:
    """(active speech level, peak) in dBFS of little-endian PCM16."""
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    if not samples:
        raise MakeAudioError("sox trimmed the clip to nothing")
    frame = RATE // 50
    powers = [
        sum(s * s for s in samples[i : i + frame]) / len(samples[i : i + frame]) / 32768.0**2
        for i in range(0, len(samples), frame)
    ]
    loudest = max(powers)
    active = [p for p in powers if p > 0 and p >= loudest * 10 ** (-ACTIVE_BELOW_LOUDEST_DB / 10)]
    active_db = 10 * math.log10(sum(active) / len(active))
    peak_db = 20 * math.log10(max(abs(min(samples)), max(samples)) / 32768.0)
    return active_db, peak_db


def make_clip(name: str, entry: dict[str, object]) -> tuple[bytes, float, bool]:
    """Generate one clip; return its µ-law bytes, its active level (dBFS) and if the peak limited it."""
    speaker, text, language = entry.get("speaker"), entry.get("text"), entry.get("language", "en")
    if speaker not in VOICES or not isinstance(text, str) or not text.strip():
        raise MakeAudioError(f"{name}: needs a speaker ({' or '.join(VOICES)}) and a non-empty text")
    if language not in LANGUAGE_VOICES:
        raise MakeAudioError(f"{name}: language must be one of {', '.join(LANGUAGE_VOICES)}, not {language!r}")
    pcm = speak(text, str(speaker), str(language))
    active_db, peak_db = levels(pcm)
    limited = PEAK_CEILING_DBFS - peak_db < TARGET_DBFS - active_db
    gain = PEAK_CEILING_DBFS - peak_db if limited else TARGET_DBFS - active_db
    ulaw = run(["sox", "-D", *PCM_ARGS, "-", *ULAW_ARGS, "-", "gain", f"{gain:.2f}"], pcm)
    return ulaw, active_db + gain, limited


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="clips to regenerate (default: all)")
    args = parser.parse_args(argv)

    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        print(f"make_audio: {' and '.join(missing)} not found; install them (apt-get install espeak-ng sox)", file=sys.stderr)
        return 2
    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise MakeAudioError(f"{MANIFEST.name}: expected an object mapping clip names to entries")
        unknown = sorted(set(args.names) - set(manifest))
        if unknown:
            raise MakeAudioError(f"not in {MANIFEST.name}: {', '.join(unknown)}")
        for name in args.names or list(manifest):
            ulaw, level, limited = make_clip(name, manifest[name])
            write_atomic(AUDIO_DIR / f"{name}.ulaw", ulaw)
            manifest[name]["duration_ms"] = len(ulaw) // (RATE // 1000)
            manifest[name]["sha256"] = hashlib.sha256(ulaw).hexdigest()
            note = "  (peak-limited)" if limited else ""
            print(f"{name:22} {manifest[name]['duration_ms']:6d} ms  active level {level:6.1f} dBFS{note}")
    except (MakeAudioError, OSError, ValueError) as exc:
        print(f"make_audio: {exc}", file=sys.stderr)
        return 1
    write_atomic(MANIFEST, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())

    stale = sorted(p.name for p in AUDIO_DIR.glob("*.ulaw") if p.stem not in manifest)
    if stale:
        print(f"make_audio: not in the manifest (delete them?): {', '.join(stale)}", file=sys.stderr)
    total = sum((AUDIO_DIR / f"{n}.ulaw").stat().st_size for n in manifest if (AUDIO_DIR / f"{n}.ulaw").exists())
    print(f"total {total} bytes in {len(manifest)} clips")
    if total >= MAX_TOTAL_BYTES:
        print(f"make_audio: clips total {total} bytes, over the {MAX_TOTAL_BYTES} byte budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
