"""The PCM16 path's resamplers: voicebridge's polyphase FIR (`edges.audio.Resampler`) against soxr.

For each direction (8→24 kHz toward the model, 24→8 kHz toward the caller) the same 20 ms
chunks (100 ms for the model's deltas) are streamed through each resampler, as a call does.
Reported: CPU µs per chunk, the most audio a resampler held back while streaming (latency added
to the call: soxr's better filters release output in blocks), and quality on a test signal: the level of a 1 kHz tone kept (dB),
the strongest alias/image of a 3.4 kHz tone (dB below the tone) and of a 5 kHz tone that must
be removed going down. Run: python bench/resample.py [--seconds S] (needs `pip install soxr numpy`).
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import numpy as np
import soxr

from voicebridge.edges.audio import Resampler


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * 32767 * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def level_db(x: np.ndarray, rate: int, freq: float) -> float:
    """Level of `freq` in x (dB full scale), by a windowed DFT bin."""
    x = x.astype(np.float64) / 32767
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) / (w.sum() / 2)
    k = int(round(freq * len(x) / rate))
    return float(20 * np.log10(spec[max(k - 2, 0):k + 3].max() + 1e-12))


def peak_except(x: np.ndarray, rate: int, freq: float) -> float:
    x = x.astype(np.float64) / 32767
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) / (w.sum() / 2)
    k = int(round(freq * len(x) / rate))
    spec[max(k - 8, 0):k + 9] = 0
    return float(20 * np.log10(spec.max() + 1e-12))


def ours(src: int, dst: int):  # type: ignore[no-untyped-def]
    r = Resampler(src, dst)
    return lambda chunk: np.frombuffer(r.process(chunk.tobytes()), dtype=np.int16)


def theirs(src: int, dst: int, quality: str):  # type: ignore[no-untyped-def]
    r = soxr.ResampleStream(src, dst, 1, dtype="int16", quality=quality)
    return lambda chunk: r.resample_chunk(chunk)


def stream(make, signal: np.ndarray, chunk: int, src: int, dst: int) -> tuple[np.ndarray, float, float]:  # type: ignore[no-untyped-def]
    """Stream `signal` in chunks: (output, CPU µs per chunk, most audio in ms taken in but not yet given out)."""
    run = make()
    out, t0, given, held = [], time.process_time(), 0, 0.0
    for i in range(0, len(signal) - chunk + 1, chunk):
        y = run(signal[i:i + chunk])
        out.append(y)
        given += len(y)
        held = max(held, (i + chunk) / src * 1000 - given / dst * 1000)
    cpu = time.process_time() - t0
    return np.concatenate(out), cpu / (len(signal) // chunk) * 1e6, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    s = ap.parse_args().seconds
    print("| direction | resampler | µs per chunk | audio held back, max ms | 1 kHz kept, dB | worst spur under a 3.4 kHz tone, dB | 5 kHz left after 24→8, dB |")
    print("|---|---|---|---|---|---|---|")
    for src, dst, chunk in ((8000, 24000, 160), (24000, 8000, 2400)):
        makers = (("voicebridge FIR", partial(ours, src, dst)), ("soxr HQ", partial(theirs, src, dst, "HQ")),
                  ("soxr QQ", partial(theirs, src, dst, "QQ")))
        for name, make in makers:
            y1, us, held = stream(make, tone(1000, src, s), chunk, src, dst)
            y34, _, _ = stream(make, tone(3400, src, s), chunk, src, dst)
            kept = level_db(y1[dst // 10:], dst, 1000) - level_db(tone(1000, src, s), src, 1000)
            spur = peak_except(y34[dst // 10:], dst, 3400) - level_db(y34[dst // 10:], dst, 3400)
            if src > dst:
                y5, _, _ = stream(make, tone(5000, src, s), chunk, src, dst)
                gone = f"{level_db(y5[dst // 10:], dst, 3000):.1f}"  # 5 kHz folds to 3 kHz at 8 kHz
            else:
                gone = "–"
            print(f"| {src // 1000}→{dst // 1000} kHz | {name} | {us:.1f} | {held:.1f} | {kept:+.2f} | {spur:.1f} | {gone} |")


if __name__ == "__main__":
    main()
