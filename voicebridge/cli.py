"""The `voicebridge` command: serve | demo | replay | orders | bookings | resend | calls | call.

Configuration comes from the environment and an optional `.env` file (see README); a bad value
stops the command with one line naming the variable, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from voicebridge import __version__
from voicebridge.config import JOBS, Config, ConfigError, environment

log = logging.getLogger("voicebridge")

ENV_HELP = """\
environment (also read from ./.env or $VOICEBRIDGE_ENV_FILE):
  OPENAI_API_KEY            key for the Realtime API (required by serve)
  OPENAI_REALTIME_URL       default wss://api.openai.com/v1/realtime (ws:// works for local peers)
  OPENAI_REALTIME_MODEL     default gpt-realtime
  TWILIO_AUTH_TOKEN         checks X-Twilio-Signature (required by serve unless
                            VOICEBRIDGE_ALLOW_UNSIGNED=1, a development switch that logs loudly)
  PUBLIC_URL                the https origin Twilio reaches this daemon at (required by serve)
  VOICEBRIDGE_HOST/PORT     listen address, default 127.0.0.1:8080 (serve --host/--port win)
  VOICEBRIDGE_DB            SQLite file (default ./voicebridge.sqlite3) or postgresql:// URL
  VOICEBRIDGE_JOB           pizza | appointments (default: as the business file says, else pizza)
  VOICEBRIDGE_BUSINESS      the job's business file (TOML; pizza: its menu), default: the packaged
                            example of the job (VOICEBRIDGE_MENU is the pizza menu's older name)
  ORDER_WEBHOOK_URL/SECRET  where confirmed orders are POSTed, and the HMAC key that signs them
  TRANSFER_NUMBER           the shop's number for "talk to a person" and failures
  VOICEBRIDGE_RECORD_DIR    record every call's messages as JSONL (for `voicebridge replay`)
  VOICEBRIDGE_AUDIO_RECORDING  audio recordings: twilio, local (default off; consent line first)
  VOICEBRIDGE_WORKERS       worker processes sharing the port (default 1: one process)
  VOICEBRIDGE_BUSINESSES    business files (or a directory): each number's job, menu and webhook
  more (timeouts, prices, logging): see systemd/voicebridge.env.example
"""


def _load_config(args: argparse.Namespace) -> Config:
    return Config.from_env(env_file=getattr(args, "env_file", None))


def serve_config(args: argparse.Namespace, config: Config) -> Config:
    """The settings `serve` runs with: its flags win over the environment."""
    import attrs

    if args.host is not None:
        if not args.host.strip():
            raise ConfigError("--host: empty; give an address such as 127.0.0.1 (or 0.0.0.0 for every interface)")
        config = attrs.evolve(config, host=args.host.strip())
    if args.port is not None:
        config = attrs.evolve(config, port=_port_arg(args.port))
    if args.log_format is not None:
        config = attrs.evolve(config, log_format=args.log_format)
    if config.log_format == "auto":
        config = attrs.evolve(config, log_format="text" if sys.stderr.isatty() else "json")
    return config


def _port_arg(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise ConfigError(f"--port: expected a port number from 0 to 65535, got {raw[:40]!r}")
    return value


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import trio

    from voicebridge.business import SCHEMAS, Businesses
    from voicebridge.daemon import Daemon, ListenError, listen, serve_daemon
    from voicebridge.ops.logs import setup_logging
    from voicebridge.ops.store import Store
    from voicebridge.ops.supervisor import WORKER_ENV, run_supervisor

    config = serve_config(args, config)
    config.check_serve()
    try:  # the address is tried before anything else: a port in use is one line, not a traceback
        listen(config.host, config.port, reuse_port=config.workers > 1).close()  # workers share the port
    except ListenError as exc:
        print(f"voicebridge: {exc}", file=sys.stderr)
        return 1
    # a bad business file or menu stops here, before any worker starts
    businesses = Businesses.load(config, environment(env_file=getattr(args, "env_file", None)))
    setup_logging(config.log_level, config.log_format,
                  secrets=[config.openai_api_key, config.twilio_auth_token, config.order_webhook_secret,
                           config.caldav_password, config.calendar_feed_token, config.stream_secret,
                           *(secret for b in businesses for secret in (
                               b.config.order_webhook_secret, b.config.caldav_password, b.config.calendar_feed_token))])
    if config.workers > 1 and not os.environ.get(WORKER_ENV):
        log.info("starting voicebridge %s with %d workers", __version__, config.workers,
                 extra={"event": "starting", "config": config.redacted()})
        env_file = ["--env-file", args.env_file] if getattr(args, "env_file", None) else []
        return run_supervisor(config, [sys.executable, "-m", "voicebridge", *env_file, "serve"])
    if config.allow_unsigned:
        from voicebridge.edges.security import UNSIGNED_WARNING

        log.warning(UNSIGNED_WARNING, extra={"event": "unsigned_mode"})
    log.info("starting voicebridge %s", __version__, extra={"event": "starting", "config": config.redacted()})

    async def main() -> None:
        store = await Store.open(config.db_path, schemas=SCHEMAS)
        try:
            await serve_daemon(Daemon(config, businesses=businesses, store=store), freeze_gc=True,
                               reuse_port=bool(os.environ.get(WORKER_ENV)))
        finally:
            await store.aclose()

    try:
        trio.run(main)
    except ListenError as exc:  # taken between the check above and the bind
        print(f"voicebridge: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from voicebridge.peers.demo import StaffDemo, run_demo

    staff = StaffDemo(wait_s=args.staff_wait_s, linger_s=args.staff_linger_s) if args.staff else None
    return run_demo(config, scenario=args.scenario, job=args.job, quiet=args.quiet, staff=staff)


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from voicebridge.peers.replay import run_replay_command

    return run_replay_command(config, [Path(p) for p in args.files], json_out=args.json, tolerance_s=args.tolerance)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicebridge",
        description="A phone agent: Twilio Media Streams bridged to the OpenAI Realtime API.",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"voicebridge {__version__}")
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this file instead of ./.env")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="run the daemon (Twilio webhooks + media streams)",
                       description="Run the daemon: Twilio's voice webhook, the media-stream WebSocket, "
                                   "health and metrics. Stops on SIGTERM after draining live calls.")
    p.add_argument("--host", metavar="H", help="listen address (default: VOICEBRIDGE_HOST, else 127.0.0.1)")
    p.add_argument("--port", metavar="P", help="listen port (default: VOICEBRIDGE_PORT, else 8080)")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="log lines as text or JSON (default: VOICEBRIDGE_LOG_FORMAT, else text on a terminal, "
                        "JSON otherwise)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="a whole call offline: the daemon plus local Twilio and Realtime peers",
                       description="Run the daemon on loopback with a local Realtime server and a local caller, "
                                   "and print the call live: transcript, barge-ins, tool calls, the read-back, the "
                                   "saved order or booking and its webhook delivery. No keys, no network. Uses VOICEBRIDGE_DB, the business file "
                                   "and ORDER_WEBHOOK_URL/SECRET when set; otherwise a local SQLite file and a "
                                   "local webhook receiver that prints what it got.")
    p.add_argument("--job", choices=JOBS,
                   help="the job to demo (default: VOICEBRIDGE_JOB, else the business file's, else pizza)")
    p.add_argument("--scenario", help="a packaged scenario name or a scenario TOML path (default: for pizza "
                                      "`demo`, a full order with a barge-in; for appointments `appointments`, "
                                      "a haircut booked for Tuesday at two)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--staff", action="store_true",
                   help="also serve the staff page (order board, live call) on the demo's port, print its address "
                        "and a one-time login, start the call once the page is open, and keep the page up "
                        "afterwards until Ctrl-C")
    p.add_argument("--staff-wait-s", type=float, default=120.0, metavar="S",
                   help="with --staff: start the call after S seconds even if no page was opened (default 120)")
    p.add_argument("--staff-linger-s", type=float, default=None, metavar="S",
                   help="with --staff: stop S seconds after the call instead of waiting for Ctrl-C")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("replay", help="replay recorded calls against the daemon and report differences",
                       description="Replay the peers' side of recorded calls (JSONL, see docs/architecture.md) "
                                   "against an in-process daemon on loopback, and report, message by message, "
                                   "where the bridge's messages now differ from the recording. Exit 1 on any "
                                   "difference.")
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s): .jsonl or .jsonl.gz")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--tolerance", type=float, default=0.25, metavar="S",
                   help="timing difference (seconds) still counted as the same behaviour (default 0.25)")
    p.set_defaults(func=cmd_replay)

    for module in ("orders", "bookings", "calls", "call", "staff"):
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = __import__(f"voicebridge.commands.{module}", fromlist=["register"]).register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _load_config(args)
        return int(args.func(args, config) or 0)
    except ConfigError as exc:
        print(f"voicebridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from voicebridge.jobs.appointments.business import BusinessError
        from voicebridge.jobs.pizza.menu import MenuError
        from voicebridge.peers.scenario import ScenarioError
        from voicebridge.daemon import ListenError
        from voicebridge.ops.store import StoreError

        if isinstance(exc, (BusinessError, MenuError, ScenarioError, StoreError, ListenError)):
            print(f"voicebridge: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
