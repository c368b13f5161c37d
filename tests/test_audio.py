"""G.711 µ-law codec, streaming resampler and level meter, measured on real signals."""

from __future__ import annotations

import array
import math
import random

import pytest

from voicebridge.edges.audio import (
    DIGITAL_SILENCE_DBFS,
    Resampler,
    downsample_24k_to_8k,
    energy_dbfs,
    pcm16_to_ulaw,
    ulaw_ms,
    ulaw_to_pcm16,
    upsample_8k_to_24k,
)

FULL_SCALE = 32768.0


# -- signal helpers (pure Python, computed here, independent of the module) --------------


def sine(freq_hz: float, rate: int, n: int, peak_dbfs: float = -10.0) -> list[int]:
    amp = FULL_SCALE * 10 ** (peak_dbfs / 20)
    return [round(amp * math.sin(2 * math.pi * freq_hz * i / rate)) for i in range(n)]


def to_pcm(samples: list[int]) -> bytes:
    return array.array("h", samples).tobytes()


def from_pcm(pcm: bytes) -> list[int]:
    return array.array("h", pcm).tolist()


def rms_db(samples: list[int]) -> float:
    return 10 * math.log10(sum(s * s for s in samples) / len(samples) / FULL_SCALE**2)


def tone_peak_db(samples: list[int], freq_hz: float, rate: int) -> float:
    """Peak amplitude (dBFS) of the `freq_hz` component: one DFT bin over whole cycles."""
    n = len(samples)
    w = 2 * math.pi * freq_hz / rate
    re = sum(s * math.cos(w * i) for i, s in enumerate(samples))
    im = sum(s * math.sin(w * i) for i, s in enumerate(samples))
    return 20 * math.log10(2 * math.hypot(re, im) / n / FULL_SCALE + 1e-12)


def zero_crossing_hz(samples: list[int], rate: int) -> float:
    """Frequency from interpolated zero crossings between the first and the last."""
    times = []
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        if (a < 0 <= b) or (a >= 0 > b):
            times.append(i - 1 + a / (a - b))
    return (len(times) - 1) / 2 / ((times[-1] - times[0]) / rate)


def segment_half_step(code: int) -> int:
    """Half the quantisation step of the µ-law segment a code belongs to (16-bit units)."""
    exponent = ((~code) >> 4) & 0x07
    return 4 << exponent


# -- µ-law ------------------------------------------------------------------------------


def test_ulaw_decodes_to_the_g711_reference_values() -> None:
    """Known G.711 codes decode to their table values, little-endian."""
    pcm = from_pcm(ulaw_to_pcm16(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE, 0x7E, 0xF0, 0x70])))
    assert pcm == [0, 0, 32124, -32124, 8, -8, 120, -120]
    assert ulaw_to_pcm16(b"\x80") == b"\x7c\x7d"  # 32124 = 0x7D7C


def test_pcm16_encodes_silence_and_full_scale_to_the_g711_codes() -> None:
    """Zero is 0xFF, the extremes clip to the loudest codes, sign flips the top bit."""
    assert pcm16_to_ulaw(to_pcm([0, 32767, -32768, 32124, -32124, 8, -8])) == bytes(
        [0xFF, 0x80, 0x00, 0x80, 0x00, 0xFE, 0x7E]
    )


def test_every_16_bit_sample_round_trips_within_half_a_segment_step() -> None:
    """Encode then decode of every unclipped sample errs by at most half its segment's step."""
    samples = list(range(-32635, 32636))
    codes = pcm16_to_ulaw(to_pcm(samples))
    decoded = from_pcm(ulaw_to_pcm16(codes))
    worst = max(abs(d - s) - segment_half_step(c) for s, c, d in zip(samples, codes, decoded))
    assert worst <= 0
    every_code = bytes(range(256))  # 0x7F is "negative zero": it comes back as 0xFF
    assert pcm16_to_ulaw(ulaw_to_pcm16(every_code)) == every_code.replace(b"\x7f", b"\xff")


@pytest.mark.parametrize("freq_hz", [440.0, 1000.0])
def test_sine_survives_ulaw_with_g711_error_and_snr_over_30_db(freq_hz: float) -> None:
    """A -10 dBFS tone through µ-law keeps each sample within half a step and SNR > 30 dB."""
    tone = sine(freq_hz, 8000, 8000)
    codes = pcm16_to_ulaw(to_pcm(tone))
    back = from_pcm(ulaw_to_pcm16(codes))
    assert all(abs(b - t) <= segment_half_step(c) for t, c, b in zip(tone, codes, back))
    noise = [b - t for t, b in zip(tone, back)]
    assert rms_db(tone) - rms_db(noise) > 30.0


def test_odd_length_pcm_is_refused_with_a_clear_error() -> None:
    """PCM16 with a dangling byte raises ValueError naming the byte count."""
    with pytest.raises(ValueError, match=r"even number of bytes.*got 3 bytes"):
        pcm16_to_ulaw(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="even number of bytes"):
        upsample_8k_to_24k(b"\x00")
    with pytest.raises(ValueError, match="even number of bytes"):
        downsample_24k_to_8k(b"\x00\x00\x00")


def test_ulaw_ms_counts_eight_bytes_per_millisecond() -> None:
    """One 20 ms Twilio frame is 160 bytes; partial milliseconds round down."""
    assert [ulaw_ms(160), ulaw_ms(8000), ulaw_ms(7), ulaw_ms(0)] == [20, 1000, 0, 0]
    with pytest.raises(ValueError, match="negative"):
        ulaw_ms(-8)


# -- level meter ------------------------------------------------------------------------


def test_energy_dbfs_reads_a_tone_level_and_floors_digital_silence() -> None:
    """A -10 dBFS-peak sine reads about -13 dBFS RMS; 0xFF, 0x7F and empty read the floor."""
    tone = pcm16_to_ulaw(to_pcm(sine(1000.0, 8000, 160)))
    assert energy_dbfs(tone) == pytest.approx(-13.0, abs=0.3)
    assert energy_dbfs(b"\xff" * 160) == DIGITAL_SILENCE_DBFS
    assert energy_dbfs(b"\x7f" * 160) == DIGITAL_SILENCE_DBFS
    assert energy_dbfs(b"") == DIGITAL_SILENCE_DBFS


def test_energy_dbfs_separates_speech_level_from_silence_by_over_30_db() -> None:
    """Noise at speech level (-20 dBFS RMS) sits > 30 dB above µ-law silence and line hiss."""
    rng = random.Random(7)
    speech_level = pcm16_to_ulaw(to_pcm([round(rng.gauss(0, 0.1 * FULL_SCALE)) for _ in range(160)]))
    hiss = bytes(rng.choice([0xFF, 0x7F, 0xFE, 0x7E]) for _ in range(160))  # ±8 LSB
    loud = energy_dbfs(speech_level)
    assert loud == pytest.approx(-20.0, abs=1.5)
    for quiet in (b"\xff" * 160, b"\x7f" * 160, hiss):
        assert loud - energy_dbfs(quiet) > 30.0


# -- resampling -------------------------------------------------------------------------


@pytest.mark.parametrize("freq_hz", [440.0, 1000.0])
def test_8k_to_24k_to_8k_keeps_frequency_and_amplitude(freq_hz: float) -> None:
    """A tone resampled up then down keeps its pitch and level within 1 dB, and has no image."""
    tone = sine(freq_hz, 8000, 8000)
    up = from_pcm(upsample_8k_to_24k(to_pcm(tone)))
    assert len(up) == 3 * len(tone)
    steady_up = up[600 : 600 + 12000]  # 0.5 s: whole cycles of the tone and of its image
    assert zero_crossing_hz(steady_up, 24000) == pytest.approx(freq_hz, abs=1.0)
    assert tone_peak_db(steady_up, freq_hz, 24000) == pytest.approx(-10.0, abs=0.2)
    # the first image of an 8 kHz signal sits at 8000 - f; a sample-and-hold leaves it ~-23 dB
    assert tone_peak_db(steady_up, 8000 - freq_hz, 24000) < -10.0 - 50.0

    down = from_pcm(downsample_24k_to_8k(to_pcm(up)))
    assert len(down) == len(tone)
    steady = down[200 : 200 + 4000]
    assert zero_crossing_hz(steady, 8000) == pytest.approx(freq_hz, abs=1.0)
    assert abs(tone_peak_db(steady, freq_hz, 8000) - (-10.0)) < 1.0
    assert abs(rms_db(steady) - rms_db(tone)) < 1.0


@pytest.mark.parametrize("freq_hz", [3500.0, 4500.0, 6000.0, 9000.0])
def test_24k_to_8k_removes_tones_that_would_alias(freq_hz: float) -> None:
    """Tones at or above 3.5 kHz come out of 24k -> 8k at least 30 dB quieter, at every frequency."""
    tone = sine(freq_hz, 24000, 12000)
    down = from_pcm(downsample_24k_to_8k(to_pcm(tone)))[100:]
    assert rms_db(down) < rms_db(tone) - 30.0


def test_24k_to_8k_passes_a_speech_band_tone() -> None:
    """A 1 kHz tone at 24 kHz comes out at 8 kHz with its level, so the filter is not just mute."""
    tone = sine(1000.0, 24000, 12000)
    down = from_pcm(downsample_24k_to_8k(to_pcm(tone)))
    assert len(down) == 4000
    assert tone_peak_db(down[100:4000], 1000.0, 8000) == pytest.approx(-10.0, abs=0.2)


def _speechlike(rate: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = i / rate
        v = 6000 * math.sin(2 * math.pi * 180 * t) + 3000 * math.sin(2 * math.pi * 2300 * t * (1 + t))
        out.append(max(-32768, min(32767, round(v + rng.gauss(0, 2000)))))
    return out


@pytest.mark.parametrize(("src", "dst"), [(8000, 24000), (24000, 8000)])
def test_chunked_streaming_output_equals_one_shot(src: int, dst: int) -> None:
    """Feeding 20 ms frames or ragged chunks gives exactly the one-shot output, no edge clicks."""
    pcm = to_pcm(_speechlike(src, src // 2, seed=src))
    one_shot = Resampler(src, dst).process(pcm)
    frame = src // 50 * 2  # 20 ms in bytes
    framed = Resampler(src, dst)
    assert b"".join(framed.process(pcm[i : i + frame]) for i in range(0, len(pcm), frame)) == one_shot

    rng = random.Random(1)
    ragged, out, pos = Resampler(src, dst), [], 0
    for _ in range(10_000):  # bounded; ends when the input is used up
        if pos >= len(pcm):
            break
        size = 2 * rng.choice([0, 1, 2, 3, 5, 80, 161, 480])
        out.append(ragged.process(pcm[pos : pos + size]))
        pos += size
    assert pos >= len(pcm)
    assert b"".join(out) == one_shot


def test_a_bad_chunk_leaves_the_stream_intact() -> None:
    """An odd-length chunk is refused and the stream continues as if it never came."""
    pcm = to_pcm(_speechlike(24000, 4800, seed=3))
    expected = Resampler(24000, 8000).process(pcm)
    state = Resampler(24000, 8000)
    first = downsample_24k_to_8k(pcm[:962], state)
    with pytest.raises(ValueError, match="even number of bytes"):
        downsample_24k_to_8k(b"\x01\x02\x03", state)
    assert first + downsample_24k_to_8k(pcm[962:], state) == expected


def test_resampler_refuses_a_mismatched_stream_or_ratio() -> None:
    """A state for the other direction, or a non-integer ratio, is a clear ValueError."""
    with pytest.raises(ValueError, match="converts 8000 -> 24000 Hz, not 24000 -> 8000 Hz"):
        downsample_24k_to_8k(b"\x00\x00", Resampler(8000, 24000))
    with pytest.raises(ValueError, match="integer rate ratios"):
        Resampler(8000, 22050)
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 8000)
