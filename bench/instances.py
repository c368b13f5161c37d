"""Two voicebridge instances on one PostgreSQL database against one instance on SQLite, same load.

The call load is bench/run.py's: the same load generator (`bench/loadgen`) plays Twilio and the
Realtime service for N simultaneous calls. Here it spreads the calls over the instances as a load
balancer would: webhooks round-robin, and every K-th pair of calls (`--cross-every`) sends its
media stream to the other instance than the one that took its webhook (the stream token must
verify there, the pre-warmed session is a miss). While the calls run, `--orders` confirmed orders
are committed to the shared store, spread over the steady window, and both instances deliver
them to a local webhook receiver: each must arrive exactly once.

Layouts, each run in turn for every N and repeat (`--layouts`):

- `sqlite1`: one `voicebridge serve` on SQLite (the default), pinned to the bridge core.
- `pg2`: two `voicebridge serve` on two loopback ports, both on one PostgreSQL database (a
  throwaway server from Debian's `postgresql` package, PostgreSQL's default durability), the two
  daemons and the database server all pinned to the bridge core: the same CPU as `sqlite1`.

The load generator runs on the other core. Per run: overall and per-instance inbound/outbound
p50/p99/max, the bridge's CPU-s per call-minute (daemons; the database server's own CPU apart),
store rows per call, deliveries, and the load average before and after. Everything it starts is
stopped (also on failure and Ctrl-C); only 127.0.0.1 is used.

    python bench/instances.py --calls 100,150 --repeat 3 --steady-s 30 --label instances
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import trio

from run import HERE, LOADGEN, PUBLIC, ROOT, TICKS, TOKEN, build_loadgen, cpu_s, cpu_times, free_port, start_daemon, \
    steal_share, stop, tree

sys.path.insert(0, str(ROOT / "tests"))
from pg_server import PgServer, pg_bin_dir  # noqa: E402  (the test suite's throwaway server)

from voicebridge.business import SCHEMAS  # noqa: E402
from voicebridge.jobs.pizza.job import PizzaJob  # noqa: E402
from voicebridge.jobs.pizza.menu import load_menu  # noqa: E402
from voicebridge.jobs.pizza.order import Order, OrderLine  # noqa: E402
from voicebridge.ops.store import Store  # noqa: E402
from voicebridge.peers.webhook_receiver import Receiver, serve_webhook_receiver  # noqa: E402

SECRET = "whsec-bench-instances"
CALL_TABLES = ("calls", "transcripts", "redeemed_tokens", "live_calls")
ORDER_TABLES = ("orders", "order_items", "outbox")
DELIVERY_WAIT_S = 60.0


class Orders:
    """The webhook receiver and the order committer, on a trio loop in a thread of their own."""

    def __init__(self, db: str, count: int) -> None:
        self.db, self.count = db, count
        self.receiver: Receiver | None = None
        self.committed: list[int] = []
        self.errors: list[str] = []
        self._ready = threading.Event()
        self._go = threading.Event()
        self._spread_s = 0.0
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(30) or self.receiver is None:
            raise RuntimeError(f"webhook receiver did not start: {self.errors}")
        return str(self.receiver.url)

    def commit_over(self, seconds: float) -> None:
        """Begin committing the orders, evenly over `seconds`."""
        self._spread_s = seconds
        self._go.set()

    def wait_delivered(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.receiver is not None and len(self.committed) == self.count and \
                    len(self.receiver.received) >= self.count:
                return
            time.sleep(0.2)

    def close(self) -> None:
        if self._token is not None and self._cancel is not None:
            cancel = self._cancel
            with contextlib.suppress(trio.RunFinishedError):  # its loop already ended: nothing left to cancel
                trio.from_thread.run_sync(cancel.cancel, trio_token=self._token)
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                try:
                    self.receiver = await nursery.start(
                        lambda task_status: serve_webhook_receiver(secret=SECRET, task_status=task_status))
                finally:
                    self._ready.set()
                await trio.to_thread.run_sync(self._go.wait, abandon_on_cancel=True)
                await self._commit_all()

    async def _commit_all(self) -> None:
        store = await Store.open(self.db, schemas=SCHEMAS)
        job = PizzaJob(load_menu(None), 800)
        try:
            gap = self._spread_s / max(1, self.count)
            for i in range(self.count):
                order = Order.empty(caller_number="+15550100111")
                order.lines += [OrderLine("soda", None, 1 + i % 3)]
                order.customer_name = f"Guest {i}"
                order.fulfillment = "pickup"
                now = datetime.now(timezone.utc)
                try:
                    done = await store.commit(lambda tx, o=order, t=now: job.commit(tx, None, o, t), now=now)
                    self.committed.append(done.id)
                except Exception as e:  # noqa: BLE001 -- reported with the result, the run goes on
                    self.errors.append(f"commit {i}: {e!r}")
                await trio.sleep(gap)
        finally:
            await store.aclose()


def table_counts(db: str) -> dict[str, int]:
    tables = CALL_TABLES + ORDER_TABLES
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}  # type: ignore[index]
    with sqlite3.connect(db) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_one(layout: str, n: int, args: argparse.Namespace, pg: PgServer | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vb-bench-inst-"))
    instances = 2 if layout == "pg2" else 1
    db = pg.new_database() if (layout == "pg2" and pg is not None) else str(workdir / "bench.sqlite3")
    ports = [free_port() for _ in range(instances)]
    lg_cmd = ["taskset", "-c", args.harness_core, str(LOADGEN), "--calls", str(n), "--ramp-s", str(args.ramp_s),
              "--steady-s", str(args.steady_s), "--call-s", str(args.call_s),
              "--bridge", ",".join(f"127.0.0.1:{p}" for p in ports), "--cross-every", str(args.cross_every),
              "--public-url", PUBLIC, "--twilio-token", TOKEN]
    daemons: list[subprocess.Popen[bytes]] = []
    orders = Orders(db, args.orders)
    lg = subprocess.Popen(lg_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)
    load_before = loadavg()
    try:
        assert lg.stdout is not None and lg.stdin is not None and lg.stderr is not None
        realtime_url = json.loads(lg.stdout.readline())["realtime_url"]
        hook = orders.start()
        for i, port in enumerate(ports):
            d = workdir / f"instance-{i}"
            d.mkdir()
            env = {"VOICEBRIDGE_DB": db, "ORDER_WEBHOOK_URL": hook, "ORDER_WEBHOOK_SECRET": SECRET}
            daemons.append(start_daemon(port, realtime_url, d, args.bridge_core, extra_env=env))
        time.sleep(1.0)
        marks: dict[str, Any] = {}
        errors: list[str] = []
        db_pid = postmaster_pid(pg) if (pg is not None and layout == "pg2") else None

        def sample() -> dict[str, Any]:
            return {"t": time.monotonic(), "cpu": [cpu_s(p.pid) for p in daemons],
                    "db_cpu": server_cpu_s(db_pid) if db_pid else 0.0, "stat": cpu_times()}

        def watch() -> None:
            for raw in lg.stderr:  # type: ignore[union-attr]
                line = raw.decode(errors="replace").strip()
                if line == "STEADY_BEGIN":
                    marks["0"] = sample()
                    orders.commit_over(args.steady_s * 0.8)
                elif line == "STEADY_END":
                    marks["1"] = sample()
                elif line and not line.startswith("{"):
                    errors.append(line)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        lg.stdin.write(b"go\n")
        lg.stdin.flush()
        deadline = time.monotonic() + args.ramp_s + args.steady_s + 60
        while lg.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if lg.poll() is None:
            raise RuntimeError("load generator did not finish in time")
        w.join(timeout=5)
        result: dict[str, Any] = json.loads(lg.stdout.read().decode().strip().splitlines()[-1])
        load_after = loadavg()
        orders.wait_delivered(DELIVERY_WAIT_S)
        time.sleep(1.0)  # let the ended calls' last rows land
        for dmn in daemons:
            stop(dmn)
        counts = table_counts(db)
        if "0" in marks and "1" in marks:
            a, b = marks["0"], marks["1"]
            window_min = (b["t"] - a["t"]) / 60
            per = [c1 - c0 for c0, c1 in zip(a["cpu"], b["cpu"])]
            result["bridge_cpu_s"] = round(sum(per), 2)
            result["cpu_s_per_call_min"] = round(sum(per) / (n * window_min), 4)
            result["db_server_cpu_s_per_call_min"] = round((b["db_cpu"] - a["db_cpu"]) / (n * window_min), 4)
            result["instance_cpu_s"] = [round(x, 2) for x in per]
            result["machine_steal_share"] = steal_share(a["stat"], b["stat"])
        receiver = orders.receiver
        got = [p["order_id"] for p in receiver.received] if receiver else []
        result["deliveries"] = {
            "orders_committed": len(orders.committed),
            "received": len(got),
            "distinct": len(set(got)),
            "exactly_once": sorted(got) == sorted(orders.committed) and len(orders.committed) == args.orders,
            "requests": len(receiver.requests) if receiver else 0,
            "duplicates_refused": sum(1 for r in receiver.requests if r.duplicate) if receiver else 0,
            "commit_errors": orders.errors[:5],
        }
        calls_rows = max(1, counts["calls"])
        result["store_rows"] = counts
        result["store_rows_per_call"] = {t: round(counts[t] / calls_rows, 2) for t in CALL_TABLES}
        result["layout"] = layout
        result["load_before"], result["load_after"] = load_before, load_after
        result["harness_errors"] = errors[:20]
        for i, inst in enumerate(result.get("instances", [])):
            inst["calls_placed"] = inst.pop("calls")
            inst["cpu_s"] = result.get("instance_cpu_s", [None] * instances)[i]
        return result
    finally:
        stop(lg, signal.SIGKILL)
        for dmn in daemons:
            stop(dmn)
        orders.close()


def server_cpu_s(pid: int) -> float:
    """CPU time of the database server: its live processes and the backends that already ended
    (reaped by the postmaster, so counted in its cutime/cstime)."""
    total = cpu_s(pid)
    with contextlib.suppress(OSError):  # the process is gone: its own CPU is all there is to count
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / TICKS
    return total


def postmaster_pid(pg: PgServer) -> int:
    """The server's main process (its backends are its children), from its pid file."""
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def pin(pid: int, cores: str) -> None:
    """Pin a process tree (the database server and its backends) to `cores` ("0" or "0,1")."""
    cpus = {int(c) for c in cores.split(",")}
    for p in tree(pid):
        try:
            os.sched_setaffinity(p, cpus)
        except OSError:
            continue


def med(rows: list[dict[str, Any]], *path: str) -> float:
    vals = []
    for r in rows:
        v: Any = r
        for k in path:
            v = v.get(k, {}) if isinstance(v, dict) else {}
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return round(statistics.median(vals), 3) if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="100", help="comma-separated N values (simultaneous calls in all)")
    ap.add_argument("--layouts", default="sqlite1,pg2")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each layout and N (the table shows medians)")
    ap.add_argument("--steady-s", type=float, default=30.0)
    ap.add_argument("--ramp-s", type=float, default=10.0)
    ap.add_argument("--call-s", type=float, default=40.0)
    ap.add_argument("--cross-every", type=int, default=4,
                    help="with two instances, every K-th pair of calls has webhook and stream on different ones")
    ap.add_argument("--orders", type=int, default=50, help="orders committed during each run's steady window")
    ap.add_argument("--bridge-core", default="0", help="the daemons' and the database server's core(s)")
    ap.add_argument("--harness-core", default="1")
    ap.add_argument("--label", default="instances")
    ap.add_argument("--tables", action="store_true", help="only print the tables of results/LABEL.json")
    args = ap.parse_args()
    if args.tables:
        saved = json.loads((HERE / "results" / f"{args.label}.json").read_text())
        print(summary(saved), every_run(saved), sep="\n\n")
        return 0
    layouts = [x for x in args.layouts.split(",") if x]
    if set(layouts) - {"sqlite1", "pg2"}:
        ap.error("--layouts: sqlite1 and/or pg2")
    build_loadgen()
    pg: PgServer | None = None
    out_path = HERE / "results" / f"{args.label}.json"
    results: list[dict[str, Any]] = []
    try:
        if "pg2" in layouts:
            bin_dir = pg_bin_dir()
            if bin_dir is None:
                print("PostgreSQL is not installed (apt-get install -y postgresql)", file=sys.stderr)
                return 2
            pg = PgServer(bin_dir, durable=True)
            pg.start()
            pin(postmaster_pid(pg), args.bridge_core)
        for rep in range(args.repeat):
            for n in [int(x) for x in args.calls.split(",") if x]:
                for layout in layouts:
                    res = run_one(layout, n, args, pg)
                    res["repeat"] = rep
                    res["label"] = args.label
                    results.append(res)
                    out_path.write_text(json.dumps(results, indent=1) + "\n")
                    print(line(res), flush=True)
    except KeyboardInterrupt:
        print("interrupted; partial results kept in", out_path, file=sys.stderr)
        return 130
    finally:
        if pg is not None:
            pg.stop()
    print(summary(results))
    print()
    print(every_run(results))
    return 0


def line(r: dict[str, Any]) -> str:
    def t(d: dict[str, Any]) -> str:
        return f"{d.get('p50', 0):.2f}/{d.get('p99', 0):.2f}/{d.get('max', 0):.1f}" if d.get("n") else "-"
    parts = [f"{r['layout']:7s} N={r['calls']:4d} #{r['repeat']}  in {t(r['inbound_ms'])}  out {t(r['outbound_ms'])}",
             f"CPU-s/call-min {r.get('cpu_s_per_call_min', float('nan')):.3f}"
             f" (+db {r.get('db_server_cpu_s_per_call_min', 0):.3f})",
             f"failed {r['calls_failed']}  delivered once: {r['deliveries']['exactly_once']}"
             f"  load {r['load_before'][0]}->{r['load_after'][0]}"]
    for i, inst in enumerate(r.get("instances", [])):
        parts.append(f"  [{i}] {inst['calls_placed']} calls in {t(inst['inbound_ms'])} out {t(inst['outbound_ms'])}")
    return "  ".join(parts)


def every_run(results: list[dict[str, Any]]) -> str:
    """One Markdown row per run, in the order of docs/performance.md's second table."""
    out = ["| layout | N | run | load average before → after | inbound p50 / p99 / max ms | outbound p50 / p99 / max ms "
           "| p99 in / out per instance | bridge CPU-s per call-min | PostgreSQL CPU-s per call-min "
           "| greeting (bridge share) p99 ms | failed calls | orders received / committed |",
           "|---" * 12 + "|"]
    for r in sorted(results, key=lambda r: (r["calls"], r["repeat"], r["layout"] != "sqlite1")):
        i, o = r["inbound_ms"], r["outbound_ms"]
        per = " · ".join(f"{x['inbound_ms'].get('p99', 0):.2f} / {x['outbound_ms'].get('p99', 0):.2f}"
                         for x in r.get("instances", [])) or "–"
        db = f"{r['db_server_cpu_s_per_call_min']:.3f}" if r["layout"] == "pg2" else "–"
        out.append(f"| {r['layout']} | {r['calls']} | {r['repeat'] + 1} | {r['load_before'][0]} → {r['load_after'][0]} "
                   f"| {i.get('p50', 0):.2f} / {i.get('p99', 0):.2f} / {i.get('max', 0):.1f} "
                   f"| {o.get('p50', 0):.2f} / {o.get('p99', 0):.2f} / {o.get('max', 0):.1f} | {per} "
                   f"| {r.get('cpu_s_per_call_min', float('nan')):.3f} | {db} "
                   f"| {r['greeting_bridge_ms'].get('p99', 0):.1f} | {r['calls_failed']} "
                   f"| {r['deliveries']['received']}/{r['deliveries']['orders_committed']} |")
    return "\n".join(out)


def summary(results: list[dict[str, Any]]) -> str:
    """Medians over the repeats, as the Markdown table of docs/performance.md."""
    out = ["| layout | N | runs | inbound p99 ms (per instance) | outbound p99 ms (per instance) | bridge CPU-s per "
           "call-minute (+ database server) | store rows per call (calls / transcripts / tokens / live) "
           "| orders delivered exactly once | load average before → after |",
           "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["layout"], r["calls"]) for r in results}, key=lambda k: (k[1], k[0]))
    for layout, n in keys:
        rows = [r for r in results if r["layout"] == layout and r["calls"] == n]
        per_in = per_out = ""
        if rows[0].get("instances"):
            k = len(rows[0]["instances"])
            per_in = " (" + " / ".join(
                str(round(statistics.median(r["instances"][i]["inbound_ms"].get("p99", float("nan")) for r in rows), 2))
                for i in range(k)) + ")"
            per_out = " (" + " / ".join(
                str(round(statistics.median(r["instances"][i]["outbound_ms"].get("p99", float("nan")) for r in rows), 2))
                for i in range(k)) + ")"
        spr = " / ".join(str(med(rows, "store_rows_per_call", t)) for t in CALL_TABLES)
        once = sum(1 for r in rows if r["deliveries"]["exactly_once"])
        loads = ", ".join(f"{r['load_before'][0]}→{r['load_after'][0]}" for r in rows)
        out.append(f"| {layout} | {n} | {len(rows)} | {med(rows, 'inbound_ms', 'p99')}{per_in} "
                   f"| {med(rows, 'outbound_ms', 'p99')}{per_out} | {med(rows, 'cpu_s_per_call_min')} "
                   f"(+ {med(rows, 'db_server_cpu_s_per_call_min')}) | {spr} "
                   f"| {once} of {len(rows)} runs ({rows[0]['deliveries']['orders_committed']} orders each) | {loads} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
