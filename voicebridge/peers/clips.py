"""The peers' real-speech clip library: 8 kHz µ-law clips listed in `audio/clips.json`.

`scripts/make_audio.py` generates the clips; this module only reads the committed files
(via `importlib.resources`, so it works from a wheel) and checks each against the
manifest's sha256 once, on first use.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from importlib.resources.abc import Traversable

import attrs

from voicebridge.edges.audio import ulaw_ms

SPEAKERS = ("assistant", "caller")
MANIFEST = "clips.json"


class ClipLibraryError(Exception):
    """The clip manifest or a clip file is missing, malformed, or does not match."""


@attrs.frozen
class Clip:
    """One spoken line: who says it, what they say, and the audio (µ-law, 8 kHz, mono)."""

    name: str
    speaker: str = attrs.field(validator=attrs.validators.in_(SPEAKERS))
    text: str
    audio: bytes = attrs.field(repr=lambda audio: f"<{len(audio)} bytes>")

    @property
    def duration_ms(self) -> int:
        """Length of the audio in whole milliseconds."""
        return ulaw_ms(len(self.audio))


def load_clip(name: str) -> Clip:
    """The clip called `name`; KeyError naming the known clips if there is none."""
    clips = _library()
    try:
        return clips[name]
    except KeyError:
        raise KeyError(f"no clip named {name!r}; known clips: {', '.join(sorted(clips))}") from None


def all_clips() -> dict[str, Clip]:
    """Every clip by name, in manifest order (a fresh dict; the clips are immutable)."""
    return dict(_library())


@functools.cache
def _library() -> dict[str, Clip]:
    folder = resources.files(__package__).joinpath("audio")
    try:
        manifest = json.loads(folder.joinpath(MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClipLibraryError(f"cannot read the clip manifest {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ClipLibraryError(f"{MANIFEST}: expected an object mapping clip names to entries")
    return {name: _load(folder, name, entry) for name, entry in manifest.items()}


def _load(folder: Traversable, name: str, entry: object) -> Clip:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("speaker", "text", "sha256")):
        raise ClipLibraryError(f"{MANIFEST}: {name!r} needs speaker, text and sha256 strings")
    speaker, text, sha256 = entry["speaker"], entry["text"], entry["sha256"]
    try:
        audio = folder.joinpath(f"{name}.ulaw").read_bytes()
    except OSError as exc:
        raise ClipLibraryError(f"clip {name!r}: cannot read {name}.ulaw: {exc}") from None
    if hashlib.sha256(audio).hexdigest() != sha256:
        raise ClipLibraryError(f"clip {name!r}: {name}.ulaw does not match its sha256 in {MANIFEST}")
    try:
        return Clip(name, speaker, text, audio)
    except (TypeError, ValueError) as exc:
        raise ClipLibraryError(f"clip {name!r}: {exc}") from None
