"""What the shared store costs per call: the writes every call makes, timed one after another.

    python bench/store_cost.py [--calls 500] [--db PATH]

Per call: the stream token's single-use record (`redeem_token`), the call's row
(`call_started`), its end (`call_ended`), and the outcome lookup another process makes for
`/stream-ended` (`call_outcome`). Each is one transaction on the store's thread (SQLite: WAL,
synchronous=FULL, so a commit waits for the disk); the run loop does not wait for it, but the
store's calls are serialised, so this is also how many call starts per second one store takes.
Only a temporary file (or --db) is touched.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import trio

from voicebridge.ops.store import Store


async def measure(db: Path, calls: int) -> dict[str, dict[str, float]]:
    store = await Store.open(db)
    timings: dict[str, list[float]] = {"redeem_token": [], "call_started": [], "call_ended": [], "call_outcome": []}
    try:
        for i in range(calls):
            sid = f"CA{i:032d}"
            now = datetime.now(timezone.utc)
            t = time.perf_counter()
            assert await store.redeem_token(f"{i:064x}", now + timedelta(seconds=120))
            timings["redeem_token"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.call_started(sid, stream_sid=None, from_number=None, to_number=None, direction="inbound",
                                     started_at=now, business="bench")
            timings["call_started"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.call_ended(sid, outcome="completed", ended_at=now, cost_usd=Decimal("0.01"), cost_details={})
            timings["call_ended"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.call_outcome(sid)
            timings["call_outcome"].append(time.perf_counter() - t)
    finally:
        await store.aclose()
    out = {}
    for name, values in timings.items():
        ms = sorted(v * 1000 for v in values)
        out[name] = {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--db", type=Path, help="a database file to use (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vb-store-cost-") as tmp:
        db = args.db or Path(tmp) / "cost.sqlite3"
        result = trio.run(measure, db, args.calls)
    total = sum(v["p50_ms"] for v in result.values())
    for name, v in result.items():
        print(f"{name:13s} p50 {v['p50_ms']:7.3f} ms   p99 {v['p99_ms']:7.3f} ms")
    print(f"per call (p50 sum): {total:.3f} ms of the store's thread")


if __name__ == "__main__":
    main()
