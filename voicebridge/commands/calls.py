"""`voicebridge calls`: recent calls with their outcome, estimated cost and voicemail; `calls show SID` adds the
transcript, the voicemail recording's URL and the call's audio recordings (VOICEBRIDGE_AUDIO_RECORDING) with
their length: on disk, still downloading, or deleted by retention."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from voicebridge.commands.orders import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _local, _positive, _with_store
from voicebridge.config import Config
from voicebridge.edges.recording_files import recording_name, wav_seconds
from voicebridge.ops.store import CallRow, OutboxRow, RecordingRow, Store, TranscriptRow


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
    show = sub.add_parser("show", help="one call with its cost breakdown, transcript and recordings")
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


Found = tuple[CallRow | None, list[TranscriptRow], list[tuple[RecordingRow, OutboxRow | None]]]


async def _one(store: Store, sid: str) -> Found:
    for row in await store.list_calls(limit=1000):
        if row.call_sid == sid:
            recordings = [(r, await store.outbox_for(f"recording:{r.recording_sid}", "recording"))
                          for r in await store.recordings_of(sid)]
            return row, await store.transcript(sid), recordings
    return None, [], []


def _recordings(row: CallRow, twilio: list[tuple[RecordingRow, OutboxRow | None]],
                config: Config) -> list[dict[str, Any]]:
    """The call's audio recordings: each file's name (relative to the recordings folder), whether it
    is on disk, its length in seconds, and its state (`on disk`, `deleted`, `downloading`, ...)."""
    folder = Path(config.audio_recording_dir)
    keep = config.audio_recording_keep_days
    out: list[dict[str, Any]] = []
    for rec, download in twilio:
        name = rec.file_name or _name(row.business, row.call_sid, "twilio")
        present = name is not None and (folder / name).is_file()
        if present:
            state = "on disk"
        elif rec.downloaded_at is not None:
            state = f"deleted (older than {keep} days)" if keep else "deleted"
        elif rec.status != "completed":
            state = f"not made (Twilio: {rec.status})"
        elif download is not None and download.state == "dead":
            state = f"download failed ({download.last_error or 'unknown error'}; still at Twilio)"
        else:
            tries = download.attempts if download is not None else 0
            last = f", last: {download.last_error}" if download is not None and download.last_error else ""
            state = f"downloading ({tries} failed attempts{last})" if tries else "downloading"
        out.append({"kind": "twilio", "file": name, "present": present, "duration_s": rec.duration_s,
                    "state": state, "recording_sid": rec.recording_sid})
    local = _name(row.business, row.call_sid, "local")
    if local is not None:
        seconds = wav_seconds(folder / local)
        old = keep and row.started_at < datetime.now(timezone.utc) - timedelta(days=keep)
        if (folder / local).is_file():
            out.append({"kind": "local", "file": local, "present": True,
                        "duration_s": None if seconds is None else round(seconds), "state": "on disk"})
        elif "local" in config.audio_recording and old:
            out.append({"kind": "local", "file": local, "present": False, "duration_s": None,
                        "state": f"deleted (older than {keep} days)"})
    return out


def _name(business: str, call_sid: str, kind: str) -> str | None:
    try:
        return recording_name(business, call_sid, kind)
    except ValueError:
        return None


def run_show(args: argparse.Namespace, config: Config) -> int:
    found = _with_store(config, "calls show", lambda store: _one(store, args.sid))
    if found is None:
        return EXIT_USAGE
    row, lines, twilio = found
    if row is None:
        print(f"voicebridge calls show: no call {args.sid} in the last 1000 calls", file=sys.stderr)
        return EXIT_FAILED
    recordings = _recordings(row, twilio, config)
    if args.show_json:
        print(json.dumps({**_row_json(row), "recordings": recordings, "transcript": [
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
    if recordings:
        print(f"Recordings (in {config.audio_recording_dir}):")
        for r in recordings:
            seconds = r["duration_s"]
            length = f"{seconds // 60}:{seconds % 60:02d}" if seconds is not None else "-"
            print(f"  {r['kind']:<6} {length:>5}  {r['file']}  {r['state']}")
    if lines:
        print("Transcript:")
        for t in lines:
            print(f"  {'AI    ' if t.role == 'assistant' else 'caller'}: {t.text}")
    return EXIT_OK
