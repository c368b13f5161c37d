"""`voicebridge calls`: recent calls with their outcome, estimated cost and voicemail; `calls show SID` adds the
transcript and the voicemail recording's URL."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from voicebridge.commands.orders import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _local, _positive, _with_store
from voicebridge.config import Config
from voicebridge.ops.store import CallRow, Store, TranscriptRow


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("calls", help="recent calls: outcome, duration, estimated cost, voicemail; or one call's transcript",
                              description="List recent calls (newest first) with their outcome, duration and "
                                          "estimated cost (Realtime tokens at the configured prices plus Twilio "
                                          "minutes) and any voicemail the caller left, or show one call with its transcript "
                                          "and its voicemail's recording URL.")
    p.add_argument("--limit", type=_positive, default=20, help="how many calls (default 20)")
    p.add_argument("--json", dest="calls_json", action="store_true", help="machine-readable output")
    p.add_argument("--business", metavar="SLUG", help="only this business's calls (see VOICEBRIDGE_BUSINESSES)")
    p.set_defaults(func=run_list)
    sub = p.add_subparsers(dest="calls_command", metavar="show")
    show = sub.add_parser("show", help="one call with its cost breakdown and transcript")
    show.add_argument("sid", help="the CallSid (CA...)")
    show.add_argument("--json", dest="show_json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)


def _duration(row: CallRow) -> str:
    if row.ended_at is None:
        return "live"
    seconds = int((row.ended_at - row.started_at).total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"


def _row_json(row: CallRow) -> dict[str, Any]:
    return {"call_sid": row.call_sid, "business": row.business, "from": row.from_number, "to": row.to_number, "direction": row.direction,
            "started_at": row.started_at.isoformat(), "ended_at": row.ended_at.isoformat() if row.ended_at else None,
            "outcome": row.outcome, "cost_usd": str(row.cost_usd) if row.cost_usd is not None else None,
            "cost_details": row.cost_details, "voicemail_url": row.voicemail_url,
            "voicemail_duration_s": row.voicemail_duration_s}


def _voicemail(row: CallRow) -> str:
    if row.voicemail_url is None:
        return "-"
    return f"{row.voicemail_duration_s}s" if row.voicemail_duration_s is not None else "yes"


def run_list(args: argparse.Namespace, config: Config) -> int:
    rows = _with_store(config, "calls", lambda store: store.list_calls(args.limit, business=args.business))
    if rows is None:
        return EXIT_USAGE
    if args.calls_json:
        print(json.dumps([_row_json(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("No calls yet.")
        return EXIT_OK
    table: list[tuple[str, ...]] = [("Time", "Call", "From", "Length", "Outcome", "Cost", "Voicemail")]
    several = len({r.business for r in rows}) > 1  # many businesses: say whose each call is
    if several:
        table[0] += ("Business",)
    for r in rows:
        cost = f"${r.cost_usd:.4f}" if r.cost_usd is not None else "-"
        cells = (_local(r.started_at), r.call_sid, r.from_number or "-", _duration(r), r.outcome or "live", cost,
                 _voicemail(r))
        table.append(cells + ((r.business,) if several else ()))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


async def _one(store: Store, sid: str) -> tuple[CallRow | None, list[TranscriptRow]]:
    for row in await store.list_calls(limit=1000):
        if row.call_sid == sid:
            return row, await store.transcript(sid)
    return None, []


def run_show(args: argparse.Namespace, config: Config) -> int:
    found = _with_store(config, "calls show", lambda store: _one(store, args.sid))
    if found is None:
        return EXIT_USAGE
    row, lines = found
    if row is None:
        print(f"voicebridge calls show: no call {args.sid} in the last 1000 calls", file=sys.stderr)
        return EXIT_FAILED
    if args.show_json:
        print(json.dumps({**_row_json(row), "transcript": [
            {"role": t.role, "text": t.text, "at": t.at.isoformat()} for t in lines]}, indent=2))
        return EXIT_OK
    print(f"Call {row.call_sid} ({row.direction}) from {row.from_number or '-'} to {row.to_number or '-'}")
    print(f"Started {_local(row.started_at)}, length {_duration(row)}, outcome {row.outcome or 'live'}")
    if row.cost_usd is not None:
        tokens = (row.cost_details or {}).get("tokens") or {}
        detail = ", ".join(f"{k} {v}" for k, v in tokens.items() if v)
        print(f"Estimated cost ${row.cost_usd}" + (f" (tokens: {detail})" if detail else ""))
    if row.voicemail_url is not None:
        length = f" ({row.voicemail_duration_s}s)" if row.voicemail_duration_s is not None else ""
        print(f"Voicemail{length}: {row.voicemail_url}")
    if lines:
        print("Transcript:")
        for t in lines:
            print(f"  {'AI    ' if t.role == 'assistant' else 'caller'}: {t.text}")
    return EXIT_OK
