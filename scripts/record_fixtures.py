#!/usr/bin/env python3
"""Regenerate tests/fixtures/<scenario>.jsonl.gz: every packaged scenario, recorded as a real call.

Each scenario runs as `voicebridge demo` runs it: the real daemon (`Daemon` + `serve_daemon`,
same app, call engine and store) on 127.0.0.1 with the local peers (the Realtime server and a
Twilio caller that fetches TwiML, streams real speech and plays the AI's audio in real time),
recording the call through `VOICEBRIDGE_RECORD_DIR` (`Config.record_dir`). The `silent_caller`
scenario runs with a 5 s silence timeout (the meta line records it, so a replay uses it too);
every scenario has a transfer number, so `dtmf_transfer` ends in a `<Dial>`.

Content is deterministic except for message times: SIDs derive from the scenario name, the
Realtime server's ids from a seed, and the gzip header carries no name or timestamp. Times
move by a millisecond or so between runs (the calls run on the real clock).

    python scripts/record_fixtures.py                  # every scenario, all at once (about 45 s)
    python scripts/record_fixtures.py full_order demo  # only these
    python scripts/record_fixtures.py --sequential     # one call at a time (about 4 minutes)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voicebridge.config import Config  # noqa: E402
from voicebridge.daemon import Daemon, serve_daemon  # noqa: E402
from voicebridge.peers.demo import free_port  # noqa: E402
from voicebridge.business import SCHEMAS, build_job  # noqa: E402
from voicebridge.peers.realtime_server import RealtimePeer, serve_realtime_peer  # noqa: E402
from voicebridge.peers.scenario import load_scenario, scenario_names  # noqa: E402
from voicebridge.peers.twilio_caller import TwilioCaller, place_call  # noqa: E402
from voicebridge.edges.recording import read_recording  # noqa: E402
from voicebridge.ops.store import Store  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
PUBLIC_URL = "https://voicebridge-fixtures.invalid"  # reserved name: never resolves, never leaves the machine
TRANSFER_NUMBER = "+15559870099"
SILENT_CALLER_TIMEOUT_S = 5.0
REALTIME_SPEED = 4.0  # as `voicebridge demo`: the local model streams its audio 4x faster than real time
FAILED_OUTCOMES = (None, "error", "ai_failed", "no_stream")


@attrs.define
class Recorded:
    name: str
    outcome: str | None
    twilio_outcome: str
    lines: int = 0
    duration_s: float = 0.0
    size: int = 0
    problem: str | None = None


def fixed_sid(prefix: str, name: str) -> str:
    """A stable, realistic SID for a scenario: `prefix` + 32 hex digits derived from the name."""
    return prefix + hashlib.sha256(f"{prefix}:{name}".encode()).hexdigest()[:32]


def seed_for(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"seed:{name}".encode()).digest()[:8], "big")


def gzip_bytes(data: bytes) -> bytes:
    """gzip without a file name or timestamp: the same input gives the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


async def record_scenario(name: str, work: Path, out_dir: Path) -> Recorded:
    """Run one scenario through the daemon on loopback, recording it; write the fixture."""
    scenario = load_scenario(name)
    record_dir = work / name
    port = free_port()
    config = Config(
        openai_api_key="local-peer", host="127.0.0.1", port=port, public_url=PUBLIC_URL, allow_unsigned=True,
        db_path=work / f"{name}.sqlite3", record_dir=record_dir, transfer_number=TRANSFER_NUMBER,
        silence_timeout_s=SILENT_CALLER_TIMEOUT_S if name == "silent_caller" else Config().silence_timeout_s,
        drain_timeout_s=2.0, job=scenario.job, business_path=scenario.business_path(),
    )
    peer = RealtimePeer(scenario, speed=REALTIME_SPEED, seed=seed_for(name))
    outcomes: list[str] = []

    def observe(call_sid: str, kind: str, fields: dict[str, Any]) -> None:
        if kind == "ended":
            outcomes.append(str(fields["outcome"]))

    async with trio.open_nursery() as nursery:
        realtime_url = await nursery.start(partial(serve_realtime_peer, peer))
        config = attrs.evolve(config, realtime_url=realtime_url)
        store = await Store.open(config.db_path, schemas=SCHEMAS)
        try:
            daemon = Daemon(config, job=build_job(config), store=store)
            daemon.observers.append(observe)
            stop = trio.Event()
            async with trio.open_nursery() as daemon_nursery:
                await daemon_nursery.start(partial(serve_daemon, daemon, shutdown=stop))
                caller = TwilioCaller(scenario, call_sid=fixed_sid("CA", name), stream_sid=fixed_sid("MZ", name),
                                      account_sid=fixed_sid("AC", name))
                try:
                    with trio.fail_after(scenario.max_s + 60):
                        result = await place_call(f"http://127.0.0.1:{port}", scenario, public_url=PUBLIC_URL,
                                                  auth_token=None, caller=caller)
                finally:
                    stop.set()
        finally:
            await store.aclose()
        nursery.cancel_scope.cancel()

    done = Recorded(name, outcomes[-1] if outcomes else None, result.outcome)
    files = sorted(record_dir.glob("*.jsonl")) if record_dir.is_dir() else []
    if len(files) != 1:
        done.problem = f"expected one recording, found {len(files)}"
        return done
    if done.outcome in FAILED_OUTCOMES:
        done.problem = f"the call ended with outcome {done.outcome}; fixture not written"
        return done
    lines = list(read_recording(files[0]))  # the recorder's output must read back cleanly
    done.lines = len(lines)
    done.duration_s = max(float(line["t"]) for line in lines)
    data = gzip_bytes(files[0].read_bytes())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.jsonl.gz").write_bytes(data)
    done.size = len(data)
    return done


async def record_all(names: list[str], out_dir: Path, *, sequential: bool) -> list[Recorded]:
    results: dict[str, Recorded] = {}
    with tempfile.TemporaryDirectory(prefix="voicebridge-fixtures-") as tmp:
        work = Path(tmp)

        async def one(name: str) -> None:
            results[name] = await record_scenario(name, work, out_dir)
            r = results[name]
            status = r.problem or f"{r.lines} lines, {r.duration_s:.1f} s, {r.size / 1024:.0f} KiB"
            print(f"  {name}: outcome {r.outcome}, Twilio continues with {r.twilio_outcome}: {status}", flush=True)

        if sequential:
            for name in names:
                await one(name)
        else:
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
    return [results[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help="scenario names (default: every packaged scenario)")
    parser.add_argument("--out", type=Path, default=FIXTURES, help="output folder (default: tests/fixtures)")
    parser.add_argument("--sequential", action="store_true", help="record one call at a time")
    args = parser.parse_args(argv)
    known = scenario_names()
    names = args.scenarios or known
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"record_fixtures: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, format="  [%(levelname)s] %(name)s: %(message)s")
    print(f"recording {len(names)} scenario(s) in real time into {args.out}", flush=True)
    results = trio.run(partial(record_all, names, args.out, sequential=args.sequential))
    failed = [r for r in results if r.problem]
    for r in failed:
        print(f"record_fixtures: {r.name}: {r.problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
