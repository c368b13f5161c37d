"""Run the voicebridge benchmark: N simultaneous calls through the real daemon over loopback.

The load generator (`bench/loadgen`, Rust, std only) plays Twilio's side of every call and the
OpenAI Realtime service; this script builds it, starts the daemon pinned to one core and the
load generator on the other, samples the daemon's CPU and memory from /proc during the steady
window, and writes one JSON result per N. Everything it starts is stopped, also on Ctrl-C.

    python bench/run.py --calls 1,10,50,100,200 --label after     # the sweep
    python bench/run.py --calls 100 --steady-s 30                 # one N
    python bench/run.py --calls 100 --external 127.0.0.1:9000 --realtime-port 9100 --bridge-pid PID
                                                                   # another bridge
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADGEN = HERE / "loadgen" / "target" / "release" / "vb-loadgen"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TOKEN = "bench-auth-token"
PUBLIC = "https://bench.voicebridge.test"


def build_loadgen() -> None:
    subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"], cwd=HERE / "loadgen", check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (worker processes count toward the bridge)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return out


def cpu_s(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def cpu_by_process(pid: int) -> dict[int, float]:
    """CPU-s of each process of the tree (with VOICEBRIDGE_WORKERS=N: the supervisor and each worker)."""
    out = {}
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def rss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total / 2**20


def cpu_times() -> list[int]:
    """The machine's aggregate CPU counters from /proc/stat (user ... steal), in ticks."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    return [int(x) for x in fields]


def steal_share(before: list[int], after: list[int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to others (steal) between two readings."""
    d = [b - a for a, b in zip(before, after)]
    return round(d[7] / max(1, sum(d)), 4)


def start_daemon(port: int, realtime_url: str, workdir: Path, core: str,
                 source: str | None = None, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`voicebridge serve` on `port`, pinned to `core`, once it said READY=1; `extra_env` overrides
    (another database, the order webhook) for bench/instances.py."""
    env = {**os.environ, "OPENAI_API_KEY": "bench-key", "OPENAI_REALTIME_URL": realtime_url,
           "PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": TOKEN, "VOICEBRIDGE_HOST": "127.0.0.1",
           "VOICEBRIDGE_PORT": str(port), "VOICEBRIDGE_DB": str(workdir / "bench.sqlite3"),
           "VOICEBRIDGE_LOG_LEVEL": os.environ.get("VOICEBRIDGE_LOG_LEVEL", "WARNING")}
    env.pop("VOICEBRIDGE_ALLOW_UNSIGNED", None)
    env.update(extra_env or {})
    if source:  # measure another checkout of voicebridge (e.g. the code before a change)
        env["PYTHONPATH"] = source
    cmd = ["taskset", "-c", core, sys.executable, "-m", "voicebridge", "serve"]
    log = open(workdir / "daemon.log", "wb")
    # READY=1 on a notify socket, as systemd hears it: with VOICEBRIDGE_WORKERS=N, once all N serve
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(workdir / "notify.sock"))
    notify.settimeout(0.2)
    env["NOTIFY_SOCKET"] = str(workdir / "notify.sock")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(workdir / 'daemon.log').read_text()[-2000:]}")
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return proc
            except OSError:
                continue
    finally:
        notify.close()
    stop(proc)
    raise RuntimeError("daemon did not become ready within 40 s")


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def run_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vb-bench-"))
    lg_cmd = ["taskset", "-c", args.harness_core, str(LOADGEN), "--calls", str(n), "--ramp-s", str(args.ramp_s),
              "--steady-s", str(args.steady_s), "--call-s", str(args.call_s), "--delta-ms", str(args.delta_ms)]
    daemon: subprocess.Popen[bytes] | None = None
    if args.external:
        lg_cmd += ["--bridge", args.external, "--realtime-listen", f"127.0.0.1:{args.realtime_port}"]
        if args.no_webhook:
            lg_cmd += ["--no-webhook", "--stream-path", args.stream_path]
        if args.public_url:
            lg_cmd += ["--public-url", args.public_url]
        if args.twilio_token:
            lg_cmd += ["--twilio-token", args.twilio_token]
    else:
        port = free_port()
        lg_cmd += ["--bridge", f"127.0.0.1:{port}", "--public-url", PUBLIC, "--twilio-token", TOKEN]
    lg = subprocess.Popen(lg_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        assert lg.stdout is not None and lg.stdin is not None and lg.stderr is not None
        realtime_url = json.loads(lg.stdout.readline())["realtime_url"]
        if args.external:
            pid = args.bridge_pid
            print(f"  point the bridge's Realtime URL at {realtime_url}", file=sys.stderr)
        else:
            daemon = start_daemon(port, realtime_url, workdir, args.bridge_core, args.source)
            pid = daemon.pid
            time.sleep(1.0)
        idle_rss = rss_mib(pid) if pid else None
        samples: dict[str, Any] = {"rss": []}
        marks: dict[str, Any] = {}

        def watch() -> None:
            for raw in lg.stderr:  # type: ignore[union-attr]
                line = raw.decode(errors="replace").strip()
                if line == "STEADY_BEGIN":
                    marks["stat0"] = cpu_times()
                    if pid:
                        marks["t0"], marks["cpu0"] = time.monotonic(), cpu_s(pid)
                        marks["procs0"] = cpu_by_process(pid)
                elif line == "STEADY_END":
                    marks["stat1"] = cpu_times()
                    if pid:
                        marks["t1"], marks["cpu1"] = time.monotonic(), cpu_s(pid)
                        marks["procs1"] = cpu_by_process(pid)
                elif line and not line.startswith("{") and args.verbose:
                    print("  loadgen:", line, file=sys.stderr)
                elif line and not line.startswith("{"):
                    samples.setdefault("errors", []).append(line)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        lg.stdin.write(b"go\n")
        lg.stdin.flush()
        deadline = time.monotonic() + args.ramp_s + args.steady_s + 60
        while lg.poll() is None and time.monotonic() < deadline:
            if pid and "t0" in marks and "t1" not in marks:
                samples["rss"].append(rss_mib(pid))
            time.sleep(1.0)
        if lg.poll() is None:
            raise RuntimeError("load generator did not finish in time")
        w.join(timeout=5)
        result: dict[str, Any] = json.loads(lg.stdout.read().decode().strip().splitlines()[-1])
        if pid and "cpu1" in marks:
            window_min = (marks["t1"] - marks["t0"]) / 60
            cpu = marks["cpu1"] - marks["cpu0"]
            result["bridge_cpu_s"] = round(cpu, 2)
            result["bridge_cpu_util"] = round(cpu / (window_min * 60), 3)
            result["cpu_s_per_call_min"] = round(cpu / (n * window_min), 4)
            rss = samples["rss"] or [rss_mib(pid)]
            result["rss_idle_mib"] = round(idle_rss or 0, 1)
            result["rss_steady_mib"] = round(max(rss), 1)
            result["rss_per_call_mib"] = round((max(rss) - (idle_rss or 0)) / n, 4)
            # Each process's CPU over the window, busiest first (workers; the supervisor is ~0).
            p0, p1 = marks["procs0"], marks["procs1"]
            result["process_cpu_s"] = sorted((round(p1[p] - p0[p], 2) for p in p1 if p in p0), reverse=True)
        if "stat0" in marks and "stat1" in marks:  # a busy host (noisy neighbours) shows here
            result["machine_steal_share"] = steal_share(marks["stat0"], marks["stat1"])
        result["harness_errors"] = samples.get("errors", [])[:20]
        # Other work on the shared machine shows here (1-minute load average, before and after).
        result["load_before"], result["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        stop(lg, signal.SIGKILL)
        stop(daemon)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="1,10,50,100,200", help="comma-separated N values")
    ap.add_argument("--find-max", action="store_true", help="after the list, raise N by --step while inbound p99 < 20 ms")
    ap.add_argument("--step", type=int, default=50)
    ap.add_argument("--steady-s", type=float, default=60.0)
    ap.add_argument("--ramp-s", type=float, default=10.0)
    ap.add_argument("--call-s", type=float, default=40.0, help="mean length of one call (calls repeat per slot)")
    ap.add_argument("--delta-ms", type=int, default=100, help="model audio per Realtime delta")
    ap.add_argument("--label", default="run")
    ap.add_argument("--bridge-core", default="0")
    ap.add_argument("--harness-core", default="1")
    ap.add_argument("--external", help="host:port of another bridge (not started here)")
    ap.add_argument("--bridge-pid", type=int, help="with --external: the pid to sample CPU and memory from")
    ap.add_argument("--realtime-port", type=int, default=9100, help="with --external: where the Realtime peer listens")
    ap.add_argument("--no-webhook", action="store_true", help="with --external: open the stream without /incoming-call")
    ap.add_argument("--stream-path", default="/media-stream")
    ap.add_argument("--public-url", default="")
    ap.add_argument("--twilio-token", default="")
    ap.add_argument("--source", help="a directory holding another voicebridge package to measure (PYTHONPATH)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each N, all kept (bench/capacity.py takes medians)")
    ap.add_argument("--repeat-from", type=int, default=0,
                    help="number the runs from here (to add repeats to a label, e.g. interleaved with another)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    build_loadgen()
    out_path = HERE / "results" / f"{args.label}.json"
    results: list[dict[str, Any]] = []
    if out_path.exists():
        results = [r for r in json.loads(out_path.read_text()) if r.get("calls") is not None]
    ns = [int(x) for x in args.calls.split(",") if x]

    def record(res: dict[str, Any]) -> None:
        res["label"] = args.label
        res["framework_sockets"] = os.environ.get("VOICEBRIDGE_FRAMEWORK_SOCKETS", "0")
        res["workers"] = int(os.environ.get("VOICEBRIDGE_WORKERS", "1") or 1)
        res["bridge_cores"] = args.bridge_core
        res["harness_cores"] = args.harness_core
        key = (res["calls"], res.get("repeat", 0))
        results[:] = [r for r in results if (r["calls"], r.get("repeat", 0)) != key] + [res]
        results.sort(key=lambda r: (r["calls"], r.get("repeat", 0)))
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        print(line(res), flush=True)

    print(HEADER, flush=True)
    try:
        for rep in range(args.repeat):
            for n in ns:
                res = run_one(n, args)
                res["repeat"] = args.repeat_from + rep
                record(res)
        if args.find_max:
            n = max(ns)
            while True:
                n += args.step
                res = run_one(n, args)
                record(res)
                if res["inbound_ms"].get("p99", 1e9) >= 20 or res["calls_failed"]:
                    break
    except KeyboardInterrupt:
        print("interrupted; partial results kept in", out_path, file=sys.stderr)
        return 130
    return 0


HEADER = ("    N  in p50/p99/max ms   out p50/p99/max ms  clear p99  trunc p99  trunc err max|ms  greet p99"
          "  CPU-s/call-min  MiB/call  lost/dup/reord in|out  stale  late  failed  steal%")


def line(r: dict[str, Any]) -> str:
    def t(d: dict[str, Any]) -> str:
        return f"{d.get('p50', 0):5.2f}/{d.get('p99', 0):6.2f}/{d.get('max', 0):6.1f}" if d.get("n") else "      -     "
    ib, ob = r["inbound"], r["outbound"]
    return (f"{r['calls']:5d}  {t(r['inbound_ms'])}  {t(r['outbound_ms'])}  {r['clear_ms'].get('p99', 0):8.2f}"
            f"  {r['truncate_ms'].get('p99', 0):8.2f}  {r['truncation_error_all_ms'].get('max_abs', 0):12.1f}"
            f"  {r['greeting_bridge_ms'].get('p99', 0):8.2f}  {r.get('cpu_s_per_call_min', float('nan')):14.3f}"
            f"  {r.get('rss_per_call_mib', float('nan')):8.3f}"
            f"  {ib['lost']}/{ib['duplicated']}/{ib['reordered']} | {ob['lost']}/{ob['duplicated']}/{ob['reordered']}"
            f"  {ob['stale_after_clear']:5d}  {ob['late_deltas_played']:4d}  {r['calls_failed']}"
            f"  {100 * r.get('machine_steal_share', float('nan')):5.1f}")


if __name__ == "__main__":
    sys.exit(main())
