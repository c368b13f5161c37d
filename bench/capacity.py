"""What N workers carry, from bench/run.py results: the measured medians, then a derived capacity.

    python bench/capacity.py workers-one workers-two

The first label holds runs of one worker (`VOICEBRIDGE_WORKERS=1`), the second of K workers, both
with `--repeat`. For each label and N it prints the medians over the repeats (inbound and outbound
p99, the bridge's share of its core(s), CPU-s per call-minute, each worker's share of the bridge's
CPU, the load generator's own send lag, the load average), all measured.

Then, marked as derived, not measured: what K workers would hold with a core each. From the
one-worker runs it takes the largest N whose median inbound p99 stayed under 20 ms and the share
of the core the worker used there (u); from the K-worker runs at that N, the CPU-s per
call-minute (c_K) and the busiest worker's share of the calls (s_max, from its share of the CPU).
A worker with a core of its own is assumed to hold p99 < 20 ms up to the same u, so the busiest
one reaches it at N_K = u * 60 / (c * s_max) calls in all, with c between two bounds:

- low: c = c_K as measured with the K workers sharing the core(s) they ran on: it includes what
  workers add per call (a pre-warmed session opened on one worker and the stream on another,
  the cross-process lookups) but also the run loops taking turns on one core, which a core each
  would not have;
- high: c = c_1, a worker with a core of its own costing per call what a single process does.

That assumption (and that the load generator, the database and the kernel's network work are
elsewhere) is what the machine could not test.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def med(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def p(r: dict[str, Any], key: str) -> float:
    return float(r[key].get("p99", float("nan"))) if r[key].get("n") else float("nan")


def worker_shares(r: dict[str, Any], workers: int) -> list[float]:
    """The workers' shares of the bridge's CPU, busiest first (the supervisor, ~0, left out)."""
    per = r.get("process_cpu_s") or []
    top = per[:workers]
    total = sum(top)
    return [x / total for x in top] if total > 0 else []


def rows(label: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in json.loads((HERE / "results" / f"{label}.json").read_text()):
        out.setdefault(int(r["calls"]), []).append(r)
    return out


def main(labels: list[str]) -> int:
    if len(labels) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    one, many = rows(labels[0]), rows(labels[1])
    print("| run | workers | bridge cores | N | runs | inbound p99 ms | outbound p99 ms | core(s) used "
          "| CPU-s per call-minute | busiest worker's share | load generator send lag p99 ms | load average before → after |")
    print("|---" * 12 + "|")
    for label, data in ((labels[0], one), (labels[1], many)):
        for n, rs in sorted(data.items()):
            workers = int(rs[0].get("workers", 1))
            shares = [s[0] for s in (worker_shares(r, workers) for r in rs) if s]
            loads = ", ".join(f"{r['load_before'][0]}→{r['load_after'][0]}" for r in rs if "load_before" in r)
            print(f"| {label} | {workers} | {rs[0].get('bridge_cores')} | {n} | {len(rs)} "
                  f"| {med([p(r, 'inbound_ms') for r in rs]):.2f} | {med([p(r, 'outbound_ms') for r in rs]):.2f} "
                  f"| {med([r.get('bridge_cpu_util', float('nan')) for r in rs]):.3f} "
                  f"| {med([r.get('cpu_s_per_call_min', float('nan')) for r in rs]):.3f} "
                  f"| {med(shares) if shares else float('nan'):.3f} "
                  f"| {med([p(r, 'harness_send_lag_ms') for r in rs]):.2f} | {loads} |")
    held = [n for n, rs in one.items() if med([p(r, "inbound_ms") for r in rs]) < 20]
    if not held:
        print("\nderived: none (one worker never held inbound p99 < 20 ms)")
        return 0
    n1 = max(held)
    u = med([r["bridge_cpu_util"] for r in one[n1]])
    c1 = med([r["cpu_s_per_call_min"] for r in one[n1]])
    at = min(many, key=lambda n: abs(n - n1))
    workers = int(many[at][0].get("workers", 2))
    c_k = med([r["cpu_s_per_call_min"] for r in many[at]])
    s_max = med([s[0] for s in (worker_shares(r, workers) for r in many[at]) if s])
    low, high = u * 60 / (c_k * s_max), u * 60 / (c1 * s_max)
    print(f"\nDERIVED (not measured): one worker held inbound p99 < 20 ms at N = {n1} using u = {u:.3f} of its core "
          f"({c1:.3f} CPU-s per call-minute). With {workers} workers (measured at N = {at}): {c_k:.3f} CPU-s per "
          f"call-minute in all, busiest worker {s_max:.3f} of the calls. With a core per worker the busiest reaches u "
          f"at N ≈ {low:.0f} to {high:.0f}: {low / n1:.2f}× to {high / n1:.2f}× one worker.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
