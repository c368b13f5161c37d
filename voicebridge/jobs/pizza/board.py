"""The kitchen board's rules for an order's status (pure; run on the store's Transaction).

confirmed (shown as "new") -> preparing -> ready -> completed; any order not yet completed can be
cancelled, with a reason. Nothing moves back, and a finished order (completed or cancelled) stays.
"""

from __future__ import annotations

from datetime import datetime

from voicebridge.engine.job import Transaction
from voicebridge.jobs.pizza.job import stored_time

NEXT: dict[str, tuple[str, ...]] = {
    "confirmed": ("preparing", "cancelled"),
    "preparing": ("ready", "cancelled"),
    "ready": ("completed", "cancelled"),
    "completed": (),
    "cancelled": (),
}
LABEL = {"confirmed": "new", "preparing": "preparing", "ready": "ready", "completed": "completed",
         "cancelled": "cancelled"}
ACTIVE = ("confirmed", "preparing", "ready")
MAX_REASON = 200


class StatusError(Exception):
    """The move is not allowed; the message says why (shown to staff)."""


def move(tx: Transaction, order_id: int, to: str, now: datetime, reason: str | None = None) -> str:
    """Move order `order_id` to status `to`; returns the status it had. StatusError if not allowed."""
    if to not in NEXT:
        raise StatusError(f"unknown status {to!r}")
    rows = tx.execute("SELECT status FROM orders WHERE id = ?", (order_id,))
    if not rows:
        raise StatusError(f"order #{order_id} does not exist")
    old = str(rows[0]["status"])
    if to not in NEXT.get(old, ()):
        raise StatusError(f"order #{order_id} is {LABEL.get(old, old)}: it cannot become {LABEL[to]}")
    reason = (reason or "").strip()
    if to == "cancelled" and not reason:
        raise StatusError("say why the order is cancelled")
    if len(reason) > MAX_REASON:
        raise StatusError(f"the reason is longer than {MAX_REASON} characters")
    tx.execute("UPDATE orders SET status = ?, status_reason = ?, status_at = ? WHERE id = ? AND status = ?",
               (to, reason or None, stored_time(now), order_id, old))
    return old
