"""`voicebridge call NUMBER [--from NUMBER]`: place an outbound call; the agent talks when answered."""

from __future__ import annotations

import argparse
import functools
import sys

import attrs
import trio

from voicebridge.config import Config, ConfigError
from voicebridge.edges.outbound import OutboundError, check_e164, place_call

EXIT_OK = 0
EXIT_FAILED = 1  # Twilio refused the call or could not be reached
EXIT_USAGE = 2  # bad number or missing settings: nothing was sent


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `call` subcommand to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "call",
        help="place an outbound call",
        description=(
            "Ask Twilio to call NUMBER. When it is answered Twilio requests PUBLIC_URL/incoming-call "
            "and the agent takes the call. Prints the new Call SID."
        ),
    )
    parser.add_argument("number", help="number to call, E.164 (e.g. +15551234567)")
    parser.add_argument(
        "--from", dest="from_number", metavar="NUMBER", help="caller ID, E.164 (default: TWILIO_FROM_NUMBER)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, config: Config) -> int:
    """Place the call; print its SID on stdout, or one error line on stderr. Returns the exit code."""
    try:
        check_e164(args.number, "number to call")
        if args.from_number is not None:
            check_e164(args.from_number, "--from")
            config = attrs.evolve(config, twilio_from_number=args.from_number)
        config.check_outbound()
    except (OutboundError, ConfigError) as exc:
        print(f"voicebridge call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        placed = trio.run(functools.partial(place_call, config, args.number))
    except OutboundError as exc:
        print(f"voicebridge call: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(placed.sid)
    print(f"voicebridge call: calling {args.number}, status {placed.status}", file=sys.stderr)
    return EXIT_OK
