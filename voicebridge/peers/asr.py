"""Which caller clip is this? Recognition for the local Realtime peer, from the audio alone.

The local caller only ever says clips from the clip library, so "speech recognition" is
finding which caller clip an utterance is:

1. exact: when the input is µ-law (`audio/pcmu`, the phone path), pieces of the utterance's
   loud 20 ms windows are searched byte for byte in every caller clip; the clip that holds
   the most of them wins (a passthrough bridge delivers the caller's bytes unchanged);
2. envelope, the fallback for any format (PCM16 24 kHz after resampling, A-law, audio that
   was altered): the 20 ms energy envelope (dBFS) of the utterance's speech is compared with
   each clip's by normalised cross-correlation, aligned at the start of speech (±60 ms).

Leading and trailing silence are cut first, and an utterance may be the start of a clip
only (the caller was cut short), so both methods accept a prefix of a clip. Nothing good
enough: the result has no clip and an empty transcript.

Also here: level metering per window in each Realtime input format (shared with the VAD),
and G.711 A-law, which `audio/pcma` sessions need.
"""

from __future__ import annotations

import array
import functools
import math
import sys
from typing import Iterable

import attrs

from voicebridge.edges.audio import DIGITAL_SILENCE_DBFS, energy_dbfs
from voicebridge.peers.clips import Clip, all_clips

PCMU, PCMA, PCM = "audio/pcmu", "audio/pcma", "audio/pcm"
BYTES_PER_MS = {PCMU: 8, PCMA: 8, PCM: 48}  # µ-law/A-law 8 kHz; PCM16 24 kHz mono
WINDOW_MS = 20
SPEECH_DBFS = -45.0  # windows above this are speech for trimming and matching
PROBE_DBFS = -35.0  # loud windows make good exact-match probes
FLOOR_DBFS = -60.0  # the envelope is clipped here so room noise does not count
MAX_PROBES = 8
MIN_SCORE = 0.9  # envelope correlation needed to name a clip (true matches score 0.94+)
MAX_LAG_WINDOWS = 3
MIN_OVERLAP_WINDOWS = 8  # 160 ms of speech at least

_BIG_ENDIAN = sys.byteorder == "big"


@attrs.frozen
class Recognition:
    """What was heard: the clip (None when unrecognised), its text, and how sure."""

    clip: str | None
    text: str
    method: str  # "exact", "envelope" or "none"
    score: float  # exact: fraction of probes found; envelope: correlation
    heard_fraction: float  # speech heard / the clip's speech (below 1: cut short)


UNRECOGNISED = Recognition(None, "", "none", 0.0, 0.0)


# -- formats and levels -------------------------------------------------------------------


def bytes_per_ms(fmt: str) -> int:
    """Bytes per millisecond of audio in a Realtime format type (`audio/pcmu`, `audio/pcm`, …)."""
    try:
        return BYTES_PER_MS[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {', '.join(BYTES_PER_MS)}") from None


def window_dbfs(chunk: bytes, fmt: str) -> float:
    """RMS level of one chunk in dBFS, in any Realtime input format."""
    if fmt == PCMU:
        return energy_dbfs(chunk)
    samples = _samples(alaw_to_pcm16(chunk) if fmt == PCMA else chunk[: len(chunk) // 2 * 2])
    if not samples:
        return DIGITAL_SILENCE_DBFS
    mean_square = sum(s * s for s in samples) / len(samples)
    if mean_square == 0:
        return DIGITAL_SILENCE_DBFS
    return max(DIGITAL_SILENCE_DBFS, 10.0 * math.log10(mean_square / (32768.0 * 32768.0)))


def envelope(audio: bytes, fmt: str) -> list[float]:
    """Level of each whole 20 ms window, in dBFS."""
    step = bytes_per_ms(fmt) * WINDOW_MS
    return [window_dbfs(audio[i : i + step], fmt) for i in range(0, len(audio) - step + 1, step)]


def _samples(pcm: bytes) -> array.array[int]:
    out = array.array("h", pcm)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


# -- G.711 A-law (audio/pcma) -------------------------------------------------------------


def _alaw_decode_sample(code: int) -> int:
    a = code ^ 0x55
    exponent = (a & 0x70) >> 4
    mantissa = a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


def _alaw_encode_sample(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(sample if sample >= 0 else -sample - 1, 32767) >> 3  # 13-bit magnitude
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5  # 1..7
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


_ALAW_DECODED = tuple(_alaw_decode_sample(c) for c in range(256))


@functools.cache
def _alaw_table() -> bytes:
    return bytes(_alaw_encode_sample(s - 65536 if s >= 32768 else s) for s in range(65536))


def alaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 A-law to little-endian PCM16."""
    out = array.array("h", (_ALAW_DECODED[b] for b in data))
    if _BIG_ENDIAN:
        out.byteswap()
    return out.tobytes()


def pcm16_to_alaw(pcm: bytes) -> bytes:
    """Encode little-endian PCM16 to G.711 A-law."""
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must be whole 16-bit samples, got {len(pcm)} bytes")
    samples = array.array("H", pcm)
    if _BIG_ENDIAN:
        samples.byteswap()
    return bytes(map(_alaw_table().__getitem__, samples))


# -- recognition --------------------------------------------------------------------------


@attrs.frozen
class _Ref:
    clip: Clip
    env: tuple[float, ...]  # clipped at FLOOR_DBFS
    speech_start: int  # first speech window
    speech_len: int  # windows from the first to the last speech window


def _speech_span(env: list[float]) -> tuple[int, int] | None:
    loud = [i for i, e in enumerate(env) if e > SPEECH_DBFS]
    return (loud[0], loud[-1] + 1) if loud else None


def _ncc(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    da = [x - ma for x in a]
    db = [y - mb for y in b]
    num = sum(x * y for x, y in zip(da, db))
    den = math.sqrt(sum(x * x for x in da) * sum(y * y for y in db))
    return num / den if den > 0 else 0.0


class Recognizer:
    """Recognises caller clips (by default every clip whose speaker is `caller`)."""

    def __init__(self, clips: Iterable[Clip] | None = None) -> None:
        chosen = list(clips) if clips is not None else [c for c in all_clips().values() if c.speaker == "caller"]
        self._refs: list[_Ref] = []
        for clip in chosen:
            env = envelope(clip.audio, PCMU)
            span = _speech_span(env)
            if span is None:
                continue  # a silent clip cannot be recognised
            self._refs.append(_Ref(clip, tuple(max(FLOOR_DBFS, e) for e in env), span[0], span[1] - span[0]))

    def recognise(self, audio: bytes, fmt: str = PCMU) -> Recognition:
        """The caller clip `audio` (one utterance, in Realtime format `fmt`) is, or UNRECOGNISED."""
        env = envelope(audio, fmt)
        span = _speech_span(env)
        if span is None:
            return UNRECOGNISED
        if fmt == PCMU:
            found = self._exact(audio, env, span)
            if found is not None:
                return found
        return self._by_envelope(env, span)

    def _exact(self, audio: bytes, env: list[float], span: tuple[int, int]) -> Recognition | None:
        step = BYTES_PER_MS[PCMU] * WINDOW_MS
        loud = [i for i in range(span[0], span[1]) if env[i] > PROBE_DBFS]
        if not loud:
            return None
        picks = sorted({loud[round(k * (len(loud) - 1) / max(1, MAX_PROBES - 1))] for k in range(MAX_PROBES)})
        probes = [audio[i * step : (i + 1) * step] for i in picks]
        heard = span[1] - span[0]
        best: tuple[int, float, _Ref] | None = None
        for ref in self._refs:
            hits = sum(1 for p in probes if ref.clip.audio.find(p) >= 0)
            closeness = -abs(ref.speech_len - heard)
            if hits and (best is None or (hits, closeness) > best[:2]):
                best = (hits, closeness, ref)
        if best is None or best[0] * 2 < len(probes):
            return None
        ref = best[2]
        return Recognition(ref.clip.name, ref.clip.text, "exact", best[0] / len(probes),
                           min(1.0, heard / ref.speech_len))

    def _by_envelope(self, env: list[float], span: tuple[int, int]) -> Recognition:
        heard = [max(FLOOR_DBFS, e) for e in env[span[0] : span[1]]]
        best: tuple[float, _Ref] | None = None
        for ref in self._refs:
            if len(heard) > ref.speech_len + MAX_LAG_WINDOWS:
                continue  # longer than the clip: not this one
            for lag in range(-MAX_LAG_WINDOWS, MAX_LAG_WINDOWS + 1):
                start = ref.speech_start + lag
                pairs = [(h, ref.env[start + i]) for i, h in enumerate(heard) if 0 <= start + i < len(ref.env)]
                if len(pairs) < max(MIN_OVERLAP_WINDOWS, int(0.8 * len(heard))):
                    continue
                score = _ncc([p[0] for p in pairs], [p[1] for p in pairs])
                if best is None or score > best[0]:
                    best = (score, ref)
        if best is None or best[0] < MIN_SCORE:
            return UNRECOGNISED
        score, ref = best
        return Recognition(ref.clip.name, ref.clip.text, "envelope", score, min(1.0, len(heard) / ref.speech_len))
