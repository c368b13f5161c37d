"""The cost of the shared store per call: the store operations of one call, timed on SQLite and
on PostgreSQL (both on this machine, over loopback for PostgreSQL).

One call's store work, as the daemon does it: call_started, the live-call registry's start and
three flow-state upserts plus a heartbeat, 12 transcript lines, the order's commit (order, items
and outbox row in one transaction), the webhook delivery's claim and mark, the registry removal,
call_ended. Calls run one at a time (the latency a call sees) and then CONCURRENCY at once (what
one process's store carries).

    python bench/store_cost.py [--calls 200] [--concurrency 8] [--pg postgresql://...]

Without --pg a throwaway PostgreSQL server (fsync on, PostgreSQL's defaults) is started in a
temporary directory from Debian's `postgresql` package, and stopped at the end. Prints a
Markdown table; `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from pg_server import PgServer, pg_bin_dir  # noqa: E402

from voicebridge.business import SCHEMAS  # noqa: E402
from voicebridge.jobs.pizza.job import PizzaJob  # noqa: E402
from voicebridge.jobs.pizza.menu import load_menu  # noqa: E402
from voicebridge.jobs.pizza.order import Order, OrderLine  # noqa: E402
from voicebridge.ops.store import Store  # noqa: E402

MENU = load_menu(None)
JOB = PizzaJob(MENU, 800)
TRANSCRIPT_LINES = 12
STATES = ("greeting", "ordering", "confirming")


def an_order(i: int) -> Order:
    order = Order.empty(caller_number="+15550100111")
    order.lines += [OrderLine("pepperoni", "large", 1, ("mushrooms",)), OrderLine("soda", None, 1 + i % 3)]
    order.customer_name = f"Guest {i}"
    order.fulfillment = "pickup"
    return order


async def one_call(store: Store, i: int, timings: dict[str, list[float]]) -> float:
    sid = f"CA{i:032d}"
    now = datetime.now(timezone.utc)
    began = time.perf_counter()

    async def timed(name: str, coro: Any) -> Any:
        t = time.perf_counter()
        out = await coro
        timings[name].append(time.perf_counter() - t)
        return out

    await timed("call_started", store.call_started(sid, stream_sid=f"MZ{i}", from_number="+15550100111",
                                                   to_number="+15550100222", direction="inbound", started_at=now))
    for state in STATES:
        await timed("live_call_upsert", store.live_call_upsert(sid, state=state, started_at=now, business="bench",
                                                               summary={"direction": "inbound"}))
    await timed("live_calls_heartbeat", store.live_calls_heartbeat())
    for n in range(TRANSCRIPT_LINES):
        await timed("add_transcript", store.add_transcript(sid, role="caller" if n % 2 else "assistant",
                                                           text=f"line {n} of the call", item_id=None, at=now))
    order = an_order(i)
    done = await timed("commit", store.commit(lambda tx: JOB.commit(tx, sid, order, now), now=now))
    row = await timed("claim_due", store.claim_due(now + timedelta(seconds=1), owner=store.instance_id, lease_s=60))
    if row is not None:
        await timed("mark_delivered", store.mark_delivered(row.id, delivered_at=now, claimed_by=store.instance_id))
    await timed("live_call_remove", store.live_call_remove(sid))
    await timed("call_ended", store.call_ended(sid, outcome="completed", ended_at=now, cost_usd=Decimal("0.1"),
                                               cost_details={"committed": done.id}))
    return time.perf_counter() - began


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": statistics.median(ordered) * 1000, "p99": ordered[int(0.99 * (len(ordered) - 1))] * 1000}


async def measure(target: Path | str, calls: int, concurrency: int) -> dict[str, Any]:
    store = await Store.open(target, schemas=SCHEMAS)
    try:
        for i in range(5):  # warm up: connections, page cache
            await one_call(store, 10_000_000 + i, defaultdict(list))
        timings: dict[str, list[float]] = defaultdict(list)
        per_call = [await one_call(store, i, timings) for i in range(calls)]
        concurrent_timings: dict[str, list[float]] = defaultdict(list)
        per_call_concurrent: list[float] = []
        began = time.perf_counter()

        async def worker(k: int) -> None:
            for i in range(k, calls, concurrency):
                per_call_concurrent.append(await one_call(store, 1_000_000 + i, concurrent_timings))

        async with trio.open_nursery() as nursery:
            for k in range(concurrency):
                nursery.start_soon(worker, k)
        elapsed = time.perf_counter() - began
    finally:
        await store.aclose()
    return {
        "sequential_call_ms": _ms(per_call),
        "ops_ms": {name: _ms(values) for name, values in timings.items()},
        "concurrent_call_ms": _ms(per_call_concurrent),
        "concurrent_calls_per_s": calls / elapsed,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": args.calls, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = await measure(Path(tmp) / "bench.sqlite3", args.calls, args.concurrency)
    server: PgServer | None = None
    url = args.pg
    if url is None:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            print("PostgreSQL is not installed (apt-get install postgresql): SQLite only", file=sys.stderr)
            return out
        server = PgServer(bin_dir, durable=True)
        server.start()
        url = server.new_database()
    try:
        out["postgresql"] = await measure(url, args.calls, args.concurrency)
    finally:
        if server is not None:
            server.stop()
    return out


def table(result: dict[str, Any]) -> str:
    engines = [e for e in ("sqlite", "postgresql") if e in result]
    lines = ["| per call | " + " | ".join(engines) + " |", "|---|" + "---|" * len(engines)]

    def row(label: str, get: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(get(result[e]) for e in engines) + " |")

    row("one call's store work, alone (p50 / p99 ms)",
        lambda r: f"{r['sequential_call_ms']['p50']:.1f} / {r['sequential_call_ms']['p99']:.1f}")
    row(f"the same, {result['concurrency']} calls at once (p50 / p99 ms)",
        lambda r: f"{r['concurrent_call_ms']['p50']:.1f} / {r['concurrent_call_ms']['p99']:.1f}")
    row(f"calls' store work per second, {result['concurrency']} at once",
        lambda r: f"{r['concurrent_calls_per_s']:.0f}")
    for op in result[engines[0]]["ops_ms"]:
        row(f"`{op}` (p50 / p99 ms)", lambda r, op=op: f"{r['ops_ms'][op]['p50']:.2f} / {r['ops_ms'][op]['p99']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pg", help="a PostgreSQL URL to use instead of a throwaway server")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if not 1 <= args.calls <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--calls must be 1..100000 and --concurrency 1..256")
    result = trio.run(main, args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
