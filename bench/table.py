"""Print bench/results/LABEL.json as the Markdown table used in docs/performance.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmt(d: dict, key: str = "p99") -> str:
    return f"{d[key]:.2f}" if d.get("n") else "–"


def steal(r: dict) -> str:
    share = r.get("machine_steal_share")
    return "–" if share is None else f"{100 * share:.1f}"


def main(labels: list[str]) -> int:
    print("| run | N | inbound p50 / p99 / max ms | outbound p50 / p99 / max ms | clear p99 ms | cancel / truncate p99 ms "
          "| truncation error ms (max abs; stall answers) | greeting, bridge share p99 ms | Realtime closed after hang-up, max ms "
          "| Realtime sockets left open / calls "
          "| CPU-s per call-min | core used | MiB per call | lost / dup / reordered in ¦ out | late or stale audio | failed calls "
          "| host steal % |")
    print("|---" * 17 + "|")
    for label in labels:
        for r in json.loads((HERE / "results" / f"{label}.json").read_text()):
            i, o = r["inbound"], r["outbound"]
            tr, trs = r["truncation_error_ms"], r["truncation_error_stall_ms"]
            print(f"| {label} | {r['calls']} "
                  f"| {fmt(r['inbound_ms'], 'p50')} / {fmt(r['inbound_ms'])} / {fmt(r['inbound_ms'], 'max')} "
                  f"| {fmt(r['outbound_ms'], 'p50')} / {fmt(r['outbound_ms'])} / {fmt(r['outbound_ms'], 'max')} "
                  f"| {fmt(r['clear_ms'])} | {fmt(r['cancel_ms'])} / {fmt(r['truncate_ms'])} "
                  f"| {tr.get('max_abs', '–')} (n={tr.get('n', 0)}); {trs.get('max_abs', '–')} (n={trs.get('n', 0)}) "
                  f"| {fmt(r['greeting_bridge_ms'])} | {fmt(r['realtime_close_after_hangup_ms'], 'max')} "
                  f"| {r.get('realtime_sockets_left_open', '–')} / {r['calls_completed'] + r['calls_failed']} "
                  f"| {r.get('cpu_s_per_call_min', '–')} | {r.get('bridge_cpu_util', '–')} | {r.get('rss_per_call_mib', '–')} "
                  f"| {i['lost']} / {i['duplicated']} / {i['reordered']} ¦ {o['lost']} / {o['duplicated']} / {o['reordered']} "
                  f"| {o['late_deltas_played'] + o['stale_after_clear']} | {r['calls_failed']} "
                  f"| {steal(r)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["before", "after"]))
