"""`voicebridge bookings [show ID]`: the business's view of the appointment book.

Reads the database at VOICEBRIDGE_DB (queries in voicebridge.jobs.appointments.records). Times
are shown in each booking's time zone, the business's; `--json` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from voicebridge.commands.orders import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _iso, _positive, _with_store
from voicebridge.config import Config
from voicebridge.jobs.appointments.records import BookingDetail, BookingRow, get_booking, list_bookings
from voicebridge.jobs.pizza.menu import format_money
from voicebridge.ops.store import Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bookings` (with `bookings show ID`) subcommand."""
    bookings = subparsers.add_parser(
        "bookings",
        help="list recent bookings, or show one",
        description="List recent bookings (newest first) with their webhook and calendar delivery state; "
                    "--upcoming lists the next confirmed appointments, soonest first; `bookings show ID` "
                    "shows one with its history.",
    )
    bookings.add_argument("--limit", type=_positive, default=20, help="how many bookings to list (default 20)")
    bookings.add_argument("--upcoming", action="store_true", help="only confirmed appointments still to come")
    bookings.add_argument("--business", metavar="SLUG",
                          help="only this business's bookings (see VOICEBRIDGE_BUSINESSES)")
    bookings.add_argument("--json", action="store_true", dest="list_json", help="print JSON")
    bookings.set_defaults(func=run_list, show_json=False)
    sub = bookings.add_subparsers(dest="bookings_command", metavar="show ID")
    show = sub.add_parser("show", help="one booking: service, time, customer, changes, deliveries")
    show.add_argument("id", type=_positive, help="booking number")
    show.add_argument("--json", action="store_true", dest="show_json", help="print JSON")
    show.set_defaults(func=run_show)


def _when(start: datetime, time_zone: str) -> str:
    return start.astimezone(ZoneInfo(time_zone)).strftime("%a %Y-%m-%d %H:%M")


def _deliveries(r: BookingRow) -> str:
    out = f"webhook {r.delivery_state or 'none'}"
    if r.calendar_state is not None:
        out += f", calendar {r.calendar_state}"
    return out


def run_list(args: argparse.Namespace, config: Config) -> int:
    """Print recent (or upcoming) bookings."""
    after = datetime.now(timezone.utc) if args.upcoming else None
    rows = _with_store(config, "bookings", lambda store: store.read(
        lambda tx: list_bookings(tx, limit=args.limit, upcoming_after=after, business=args.business)))
    if rows is None:
        return EXIT_USAGE
    if args.list_json:
        print(json.dumps([_row_json(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        whose = f" for {args.business}" if args.business else ""
        print(f"No upcoming bookings{whose}." if args.upcoming else f"No bookings{whose} yet.")
        return EXIT_OK
    several = len({r.business for r in rows}) > 1  # many businesses: say whose each booking is
    table = [("#", "When", "Service", "Customer", "Status", "Delivery")]
    for r in rows:
        who = r.customer + (f" [{r.business}]" if several else "")
        table.append((str(r.id), _when(r.start, r.time_zone), r.service_name, who, r.status, _deliveries(r)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [row[0].rjust(widths[0]), *(row[i].ljust(widths[i]) for i in range(1, len(row) - 1)), row[-1]]
        print("  ".join(cells).rstrip())
    return EXIT_OK


async def _get(store: Store, booking_id: int) -> tuple[BookingDetail | None]:
    return (await store.read(lambda tx: get_booking(tx, booking_id)),)


def run_show(args: argparse.Namespace, config: Config) -> int:
    """Print one booking in full."""
    found = _with_store(config, "bookings show", lambda store: _get(store, args.id))
    if found is None:
        return EXIT_USAGE
    d = found[0]
    if d is None:
        print(f"voicebridge bookings show: no booking #{args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.show_json or getattr(args, "list_json", False):
        print(json.dumps(_detail_json(d), indent=2))
        return EXIT_OK
    r = d.row
    end = r.end.astimezone(ZoneInfo(r.time_zone)).strftime("%H:%M")
    print(f"Booking #{r.id}, {r.status}: {r.service_name}, {_when(r.start, r.time_zone)}-{end} ({r.time_zone})")
    print(f"Customer: {r.customer}" + (f", phone {r.phone}" if r.phone else ""))
    if r.business != "default":
        print(f"Business: {r.business}")
    if d.price_cents is not None:
        print(f"Price: {format_money(d.price_cents)}")
    if d.call_sid:
        print(f"Booked on call: {d.call_sid}")
    print(f"Calendar uid: {d.uid} (sequence {d.sequence})")
    print("History:")
    for c in d.changes:
        print(f"  {c.at.astimezone().strftime('%Y-%m-%d %H:%M')}  {c.change:9} {_when(c.start, r.time_zone)}")
    print("Deliveries:")
    for e in d.events:
        error = f" (last error: {e.last_error})" if e.last_error and e.state != "delivered" else ""
        tries = f"{e.attempts} {'attempt' if e.attempts == 1 else 'attempts'}"
        print(f"  {e.event:17} to {e.target:8} {e.state}, {tries}{error}")
    return EXIT_OK


def _row_json(r: BookingRow) -> dict[str, Any]:
    tz = ZoneInfo(r.time_zone)
    return {"id": r.id, "business": r.business, "status": r.status, "service": r.service_name, "start": r.start.astimezone(tz).isoformat(),
            "end": r.end.astimezone(tz).isoformat(), "time_zone": r.time_zone, "customer": r.customer,
            "phone": r.phone, "created_at": _iso(r.created_at),
            "delivery": {"webhook": r.delivery_state, "calendar": r.calendar_state}}


def _detail_json(d: BookingDetail) -> dict[str, Any]:
    return {**_row_json(d.row), "uid": d.uid, "sequence": d.sequence, "price_cents": d.price_cents,
            "call_sid": d.call_sid,
            "changes": [{"at": _iso(c.at), "change": c.change, "start": c.start.astimezone(
                ZoneInfo(d.row.time_zone)).isoformat(), "call_sid": c.call_sid} for c in d.changes],
            "deliveries": [{"event": e.event, "target": e.target, "state": e.state, "attempts": e.attempts,
                            "last_error": e.last_error, "delivered_at": _iso(e.delivered_at)} for e in d.events]}
