"""G.711 µ-law ⇄ PCM16 and streaming 8 kHz ⇄ 24 kHz resampling: pure functions, no I/O.

Twilio and the Realtime API both speak `audio/pcmu`, so the default path passes µ-law
through untouched; this module serves the optional PCM16 24 kHz path toward the model
and level metering for the local fake peers.

Choice: table-driven pure Python, no `audioop`. `audioop` is deprecated in 3.11–3.12 and
gone in 3.13, its `ratecv` is linear interpolation (no low-pass, so it aliases), and
tables make the codec exact and identical on every Python version without a dependency:

- decode: two 256-entry `bytes.translate` tables (low and high byte of each sample),
  interleaved by slice assignment, so the per-byte work runs in C;
- encode: a 65536-entry table indexed by the unsigned 16-bit sample (built on first use),
  standard G.711 with bias 0x84 and clip 32635;
- resampling: a linear-phase Kaiser-windowed sinc FIR (126 taps at 24 kHz, cutoff
  3.25 kHz: flat within 0.1 dB to 3 kHz, at least 45 dB down from 3.5 kHz), run as a
  polyphase interpolator (8k→24k) or a decimator that computes only the kept outputs
  (24k→8k). `Resampler` keeps the filter history and phase between chunks, so chunked
  output equals one-shot output sample for sample. The filter delays by 62.5 samples
  at 24 kHz (about 2.6 ms) in each direction.

Little-endian signed 16-bit PCM is assumed on every host.
"""

from __future__ import annotations

import array
import functools
import math
import operator
import sys
from typing import Callable, Iterable

__all__ = [
    "DIGITAL_SILENCE_DBFS",
    "Resampler",
    "downsample_24k_to_8k",
    "energy_dbfs",
    "pcm16_to_ulaw",
    "ulaw_ms",
    "ulaw_to_pcm16",
    "upsample_8k_to_24k",
]

ULAW_BYTES_PER_MS = 8  # 8 kHz, one byte per sample
DIGITAL_SILENCE_DBFS = -100.0  # what energy_dbfs reports for all-zero (or empty) audio

_BIG_ENDIAN = sys.byteorder == "big"
_BIAS = 0x84
_CLIP = 32635

BytesLike = bytes | bytearray | memoryview


# -- G.711 µ-law ------------------------------------------------------------------------


def _decode_sample(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return _BIAS - t if u & 0x80 else t - _BIAS


def _encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _CLIP) + _BIAS
    exponent = magnitude.bit_length() - 8  # magnitude is in [0x84, 0x7FFF]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


_DECODED: tuple[int, ...] = tuple(_decode_sample(c) for c in range(256))
_DECODE_LO = bytes(v & 0xFF for v in _DECODED)
_DECODE_HI = bytes((v >> 8) & 0xFF for v in _DECODED)
_SQUARES: tuple[int, ...] = tuple(v * v for v in _DECODED)


@functools.cache
def _encode_table() -> bytes:
    """µ-law code for every 16-bit sample, indexed by the sample as unsigned (two's complement)."""
    return bytes(_encode_sample(s - 65536 if s >= 32768 else s) for s in range(65536))


def ulaw_to_pcm16(data: BytesLike) -> bytes:
    """Decode G.711 µ-law bytes to little-endian signed 16-bit PCM (two bytes per input byte)."""
    raw = bytes(data)
    out = bytearray(2 * len(raw))
    out[0::2] = raw.translate(_DECODE_LO)
    out[1::2] = raw.translate(_DECODE_HI)
    return bytes(out)


def pcm16_to_ulaw(data: BytesLike) -> bytes:
    """Encode little-endian signed 16-bit PCM to G.711 µ-law (bias 0x84, clip 32635)."""
    samples = array.array("H", _check_pcm16(data))
    if _BIG_ENDIAN:
        samples.byteswap()
    return bytes(map(_encode_table().__getitem__, samples))


def ulaw_ms(n_bytes: int) -> int:
    """Whole milliseconds of audio in `n_bytes` of 8 kHz µ-law."""
    if n_bytes < 0:
        raise ValueError(f"a byte count cannot be negative, got {n_bytes}")
    return n_bytes // ULAW_BYTES_PER_MS


def energy_dbfs(ulaw: BytesLike) -> float:
    """RMS level of a µ-law chunk in dBFS (0 dBFS = full-scale DC; a full-scale sine is -3).

    Digital silence (0xFF or 0x7F bytes) and an empty chunk give DIGITAL_SILENCE_DBFS.
    """
    raw = bytes(ulaw)
    if not raw:
        return DIGITAL_SILENCE_DBFS
    mean_square = sum(map(_SQUARES.__getitem__, raw)) / len(raw)
    if mean_square == 0:
        return DIGITAL_SILENCE_DBFS
    return max(DIGITAL_SILENCE_DBFS, 10.0 * math.log10(mean_square / (32768.0 * 32768.0)))


# -- PCM16 helpers ----------------------------------------------------------------------


def _check_pcm16(data: BytesLike) -> bytes:
    raw = bytes(data)
    if len(raw) % 2:
        raise ValueError(
            f"PCM16 audio must be whole 16-bit samples (an even number of bytes), got {len(raw)} bytes"
        )
    return raw


def _pcm16_samples(data: BytesLike) -> array.array[int]:
    samples = array.array("h", _check_pcm16(data))
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def _pcm16_bytes(values: Iterable[float]) -> bytes:
    out = array.array("h", [min(32767, max(-32768, round(v))) for v in values])
    if _BIG_ENDIAN:
        out.byteswap()
    return out.tobytes()


# -- resampling -------------------------------------------------------------------------

TAPS_PER_PHASE = 42  # filter length per output phase; 126 taps for a factor of 3
CUTOFF_FRACTION = 0.8125  # cutoff as a fraction of the lower rate's Nyquist (3.25 kHz of 4 kHz)
STOPBAND_DB = 45.0  # Kaiser window design attenuation

_sumprod: Callable[[Iterable[float], Iterable[float]], float] = getattr(
    math, "sumprod", lambda a, b: sum(map(operator.mul, a, b))
)


def _bessel_i0(x: float) -> float:
    term = total = 1.0
    k = 1
    while term > 1e-15 * total:
        term *= (x / (2 * k)) ** 2
        total += term
        k += 1
    return total


@functools.cache
def _lowpass(n_taps: int, cutoff: float) -> tuple[float, ...]:
    """Kaiser-windowed sinc low-pass; `cutoff` in cycles per sample; unity DC gain."""
    a = STOPBAND_DB
    beta = 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21) if a <= 50 else 0.1102 * (a - 8.7)
    mid = (n_taps - 1) / 2
    taps = []
    for n in range(n_taps):
        x = n - mid
        ideal = 2 * cutoff if x == 0 else math.sin(2 * math.pi * cutoff * x) / (math.pi * x)
        window = _bessel_i0(beta * math.sqrt(max(0.0, 1 - (x / mid) ** 2))) / _bessel_i0(beta)
        taps.append(ideal * window)
    dc = sum(taps)
    return tuple(t / dc for t in taps)


class Resampler:
    """Streaming resampler between rates in an integer ratio (e.g. 8000 ⇄ 24000).

    Feed PCM16 chunks of any whole number of samples; the output is continuous across
    chunk edges and equal to resampling the concatenated input at once. Upsampling by L
    gives exactly L samples per input sample; downsampling by M keeps every M-th filtered
    sample, the first one included, carrying the phase between chunks.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        hi, lo = max(src_rate, dst_rate), min(src_rate, dst_rate)
        if hi % lo:
            raise ValueError(f"only integer rate ratios are supported, got {src_rate} -> {dst_rate}")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._factor = f = hi // lo
        self._phases: list[tuple[float, ...]] = []  # upsampling: one sub-filter per output phase
        self._taps: tuple[float, ...] = ()  # downsampling: the whole filter
        self._history: list[int] = []  # the input samples the next window still needs
        self._skip = 0  # downsampling: input samples to pass before the next kept output
        if f == 1:
            return
        reversed_taps = _lowpass(TAPS_PER_PHASE * f, CUTOFF_FRACTION * 0.5 / f)[::-1]  # newest last
        if dst_rate > src_rate:
            self._phases = [tuple(f * t for t in reversed_taps[f - 1 - p :: f]) for p in range(f)]
            self._history = [0] * (TAPS_PER_PHASE - 1)
        else:
            self._taps = reversed_taps
            self._history = [0] * (len(reversed_taps) - 1)

    def process(self, pcm: BytesLike) -> bytes:
        """Resample one chunk of little-endian PCM16; raises ValueError on an odd byte count."""
        samples = _pcm16_samples(pcm)
        if self._factor == 1:
            return _pcm16_bytes(samples)
        if self.dst_rate > self.src_rate:
            return self._upsample(samples)
        return self._downsample(samples)

    def _upsample(self, samples: array.array[int]) -> bytes:
        width = TAPS_PER_PHASE
        buf = self._history + samples.tolist()
        phases = self._phases
        out: list[float] = []
        for end in range(width, len(buf) + 1):
            window = buf[end - width : end]
            out.extend(_sumprod(phase, window) for phase in phases)
        self._history = buf[len(buf) - (width - 1) :]
        return _pcm16_bytes(out)

    def _downsample(self, samples: array.array[int]) -> bytes:
        taps = self._taps
        width = len(taps)
        buf = self._history + samples.tolist()
        start = width - 1 + self._skip  # buffer index of the next kept sample
        out = [_sumprod(taps, buf[i - width + 1 : i + 1]) for i in range(start, len(buf), self._factor)]
        self._skip = (start - len(buf)) % self._factor
        self._history = buf[len(buf) - (width - 1) :]
        return _pcm16_bytes(out)


def _stream(state: Resampler | None, src_rate: int, dst_rate: int) -> Resampler:
    if state is None:
        return Resampler(src_rate, dst_rate)
    if (state.src_rate, state.dst_rate) != (src_rate, dst_rate):
        raise ValueError(
            f"this Resampler converts {state.src_rate} -> {state.dst_rate} Hz, not {src_rate} -> {dst_rate} Hz"
        )
    return state


def upsample_8k_to_24k(pcm: BytesLike, state: Resampler | None = None) -> bytes:
    """PCM16 8 kHz -> 24 kHz; pass the same `state` for every chunk of one stream."""
    return _stream(state, 8000, 24000).process(pcm)


def downsample_24k_to_8k(pcm: BytesLike, state: Resampler | None = None) -> bytes:
    """PCM16 24 kHz -> 8 kHz, low-passed first; pass the same `state` for every chunk of one stream."""
    return _stream(state, 24000, 8000).process(pcm)
