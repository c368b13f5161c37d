"""One voicebridge process delivering the outbox of a shared database, for the multi-process tests.

    python outbox_process.py DB_URL WEBHOOK_URL SECRET OWNER LEASE_S TIMEOUT_S

It opens the store, runs an OutboxWorker (fast backoff, short poll) and prints "ready" on stdout;
its log goes to stderr. It runs until killed (SIGTERM: a clean stop; SIGKILL: a crash).
"""

from __future__ import annotations

import logging
import signal
import sys

import trio

from voicebridge.business import SCHEMAS
from voicebridge.ops.outbox import OutboxWorker
from voicebridge.ops.store import Store


async def main(db: str, url: str, secret: str, owner: str, lease_s: float, timeout_s: float) -> None:
    store = await Store.open(db, schemas=SCHEMAS)
    try:
        worker = OutboxWorker(store, url, secret, owner=owner, lease_s=lease_s, timeout_s=timeout_s,
                              backoff_base_s=0.02, backoff_cap_s=0.1, poll_s=0.2, max_attempts=1000)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                print("ready", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        await store.aclose()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=f"{sys.argv[4]} %(message)s")
    db, url, secret, owner, lease, timeout = sys.argv[1:7]
    trio.run(main, db, url, secret, owner, float(lease), float(timeout))
