"""`voicebridge staff add NAME [--business SLUG | --operator]`: a login for the staff page (password
asked twice, or read from stdin). A login belongs to one business (of VOICEBRIDGE_BUSINESSES; the
default business without them) and sees only its orders and calls; an operator sees every business."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timezone

import trio

from voicebridge.business import SCHEMAS, Businesses
from voicebridge.jobs.appointments.business import BusinessError
from voicebridge.config import Config
from voicebridge.edges.staff.auth import hash_password
from voicebridge.ops import staff_store as ss
from voicebridge.ops.store import Store, StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("staff", help="staff page logins: staff add NAME",
                              description="Manage the logins of the staff page (/staff on the daemon).")
    sub = p.add_subparsers(dest="staff_command", metavar="add", required=True)
    add = sub.add_parser("add", help="add a staff login; the password is asked twice",
                         description="Add a staff login. The password (8 characters or more) is asked twice "
                                     "at a prompt, or read once from standard input with --password-stdin; "
                                     "only its argon2 hash is stored.")
    add.add_argument("name", help="the login name (letters, digits, '.', '_', '-')")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    whose = add.add_mutually_exclusive_group()
    whose.add_argument("--business", metavar="SLUG",
                       help="the business whose staff this is (a slug of VOICEBRIDGE_BUSINESSES; "
                            "without it, the first business): the login sees only that business")
    whose.add_argument("--operator", action="store_true",
                       help="an operator's login: sees every business, with a switch between them")
    add.set_defaults(func=run_add)


def _password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("voicebridge staff add: the two passwords differ; nothing saved", file=sys.stderr)
        return None
    return first


def run_add(args: argparse.Namespace, config: Config) -> int:
    try:
        name = ss.check_name(args.name)
    except ss.StaffError as exc:
        print(f"voicebridge staff add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        businesses = Businesses.load(config)
    except BusinessError as exc:
        print(f"voicebridge staff add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    business = args.business or businesses.default.slug
    if businesses.get(business) is None:
        known = ", ".join(b.slug for b in businesses)
        print(f"voicebridge staff add: there is no business {business!r}; the businesses are: {known}",
              file=sys.stderr)
        return EXIT_USAGE
    password = _password(args.password_stdin)
    if password is None:
        return EXIT_USAGE
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        print(f"voicebridge staff add: {exc}; nothing saved", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> None:
        store = await Store.open(config.db_path, schemas=SCHEMAS)
        try:
            await store.commit(lambda tx: ss.add_account(tx, name, hashed, datetime.now(timezone.utc),
                                                         business=business, operator=args.operator))
        finally:
            await store.aclose()

    try:
        trio.run(main)
    except (ss.StaffError, StoreError) as exc:
        print(f"voicebridge staff add: {exc}", file=sys.stderr)
        return EXIT_FAILED
    whose = "an operator's: every business" if args.operator else f"business {business!r}"
    print(f"Added staff login {name!r} ({whose}). Log in at /staff on the daemon.")
    return EXIT_OK
