"""Plot latency and CPU against N from bench/results/LABEL.json (default: before, after, side-sample)
into docs/performance.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(labels: list[str]) -> int:
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, style in zip(labels, ("o--", "s-", "^-.", "d:")):
        path = HERE / "results" / f"{label}.json"
        if not path.exists():
            print(f"no {path}", file=sys.stderr)
            continue
        rows = [r for r in json.loads(path.read_text()) if r["inbound_ms"].get("n")]
        ns = [r["calls"] for r in rows]
        lat.plot(ns, [r["inbound_ms"]["p99"] for r in rows], style, label=f"{label}: inbound p99")
        lat.plot(ns, [r["outbound_ms"]["p99"] for r in rows], style, alpha=0.5, label=f"{label}: outbound p99")
        cpu.plot(ns, [r.get("cpu_s_per_call_min", float("nan")) for r in rows], style, label=f"{label}: CPU-s per call-minute")
        cpu.plot(ns, [r.get("bridge_cpu_util", float("nan")) for r in rows], style, alpha=0.5, label=f"{label}: core utilisation")
    lat.axhline(20, color="red", lw=0.8)
    lat.text(1, 21, "20 ms", color="red", fontsize=8)
    lat.set_xscale("log")
    lat.set_yscale("log")
    lat.set_xlabel("simultaneous calls (N)")
    lat.set_ylabel("forwarding latency p99 (ms)")
    lat.legend(fontsize=7)
    lat.grid(True, which="both", alpha=0.3)
    cpu.axhline(0.34, color="red", lw=0.8)
    cpu.text(1, 0.36, "target 0.34", color="red", fontsize=8)
    cpu.set_xscale("log")
    cpu.set_xlabel("simultaneous calls (N)")
    cpu.set_ylabel("CPU-s per call-minute / core utilisation")
    cpu.legend(fontsize=7)
    cpu.grid(True, which="both", alpha=0.3)
    fig.suptitle("the bridge on one core (taskset -c 0), loopback peers on the other")
    fig.tight_layout()
    out = HERE.parent / "docs" / "performance.png"
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["before", "after", "side-sample"]))
