"""The staff page's tables: accounts, the event log (audit trail and board sequence), the menu's day.

`staff_events` is both the audit trail (who did what, when; `actor` is NULL for the system) and
the order board's event sequence: its ids only grow, across restarts, so a reconnecting board
asks for "everything after id N" (SSE Last-Event-ID) and misses nothing and sees nothing twice.
Each account, event and menu day belongs to one business (its slug; migration 2 gave what was
there before to "default"): staff see only their own business's events. An operator account
(`operator`) belongs to none and sees every business; events of no business (accounts added or
removed) are shown to operators only.
Functions here run on the store's Transaction (`await store.commit(fn)` / `store.read(fn)`).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

import attrs

from voicebridge.engine.job import Transaction
from voicebridge.jobs.pizza.day import Availability

SCHEMA: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE staff_accounts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            expires_at TEXT
        )""",
        """CREATE TABLE staff_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE staff_menu_day (
            kind TEXT NOT NULL CHECK (kind IN ('item', 'size')),
            key TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        """CREATE TABLE staff_settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ),
    # 2: one deployment, many businesses: each account, event and menu day belongs to one. The menu
    # day's key gains the business (so the table is made anew); "closed" settings are named by it.
    (
        "ALTER TABLE staff_accounts ADD COLUMN business TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE staff_accounts ADD COLUMN operator INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE staff_events ADD COLUMN business TEXT",
        "UPDATE staff_events SET business = 'default' WHERE action NOT IN ('staff.added', 'staff.removed')",
        "CREATE INDEX staff_events_by_business ON staff_events (business, id)",
        """CREATE TABLE staff_menu_day_by_business (
            business TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('item', 'size')),
            key TEXT NOT NULL,
            PRIMARY KEY (business, kind, key)
        )""",
        "INSERT INTO staff_menu_day_by_business (business, kind, key) SELECT 'default', kind, key FROM staff_menu_day",
        "DROP TABLE staff_menu_day",
        "ALTER TABLE staff_menu_day_by_business RENAME TO staff_menu_day",
        "UPDATE staff_settings SET name = 'closed:default' WHERE name = 'closed'",
        "UPDATE staff_settings SET name = 'closed_message:default' WHERE name = 'closed_message'",
    ),
    # 3: several processes: staff act on a call carried by another process (worker or machine); the
    # page writes the request here, and the process carrying the call takes it within a second.
    (
        """CREATE TABLE staff_call_actions (
            call_sid TEXT PRIMARY KEY,
            action TEXT NOT NULL CHECK (action IN ('transferred', 'ended_by_staff')),
            requested_at TEXT NOT NULL
        )""",
    ),
)

_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_NAME = 64
DEFAULT_BUSINESS = "default"  # the slug of the one business of a deployment without business files


def _ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(_TS)


def _dt(text: str) -> datetime:
    return datetime.strptime(text, _TS).replace(tzinfo=timezone.utc)


class StaffError(Exception):
    """Bad staff input (a name taken or malformed); the message is safe to show."""


@attrs.frozen
class Account:
    id: int
    name: str
    password_hash: str
    disabled: bool
    expires_at: datetime | None
    business: str = DEFAULT_BUSINESS
    operator: bool = False  # sees every business (`business` is then only where the page opens)

    def sees(self, business: str | None) -> bool:
        """May this account see (and act on) something of `business` (None: of no business)?"""
        return self.operator or (business is not None and business == self.business)


@attrs.frozen
class Event:
    id: int
    at: datetime
    actor: str | None
    action: str
    subject: str
    detail: dict[str, Any]
    business: str | None = None


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not all(c.isalnum() or c in "._-" for c in name):
        raise StaffError(f"a staff name is 1 to {MAX_NAME} letters, digits, '.', '_' or '-'")
    return name


def add_account(tx: Transaction, name: str, password_hash: str, now: datetime, *,
                expires_at: datetime | None = None, actor: str | None = None,
                business: str = DEFAULT_BUSINESS, operator: bool = False) -> int:
    """A new login for `business`'s staff (or an operator's, who sees every business)."""
    name = check_name(name)
    if tx.execute("SELECT id FROM staff_accounts WHERE name = ?", (name,)):
        raise StaffError(f"there is already a staff account named {name!r}")
    account_id = tx.insert("INSERT INTO staff_accounts (name, password_hash, created_at, expires_at, business, operator)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (name, password_hash, _ts(now), _ts(expires_at) if expires_at else None, business,
                            1 if operator else 0))
    record(tx, actor, "staff.added", f"staff:{name}", {"operator": True} if operator else {}, now,
           None if operator else business)
    return account_id


def get_account(tx: Transaction, name: str) -> Account | None:
    rows = tx.execute("SELECT * FROM staff_accounts WHERE name = ?", (name,))
    if not rows:
        return None
    r = rows[0]
    return Account(r["id"], r["name"], r["password_hash"], bool(r["disabled"]),
                   _dt(r["expires_at"]) if r["expires_at"] else None, r["business"], bool(r["operator"]))


def remove_account(tx: Transaction, name: str, now: datetime, *, actor: str | None = None) -> None:
    tx.execute("DELETE FROM staff_accounts WHERE name = ?", (name,))
    record(tx, actor, "staff.removed", f"staff:{name}", {}, now)


def record(tx: Transaction, actor: str | None, action: str, subject: str, detail: dict[str, Any],
           now: datetime, business: str | None = None) -> int:
    """Append one event (a staff action, or the system's, with actor None) of `business` (None: of
    the deployment, seen by operators only); returns its id."""
    return tx.insert("INSERT INTO staff_events (at, actor, action, subject, detail, business) VALUES (?, ?, ?, ?, ?, ?)",
                     (_ts(now), actor, action, subject, json.dumps(detail, sort_keys=True), business))


def events_after(tx: Transaction, after: int, limit: int = 200, *, business: str | None = None) -> list[Event]:
    """Events after id `after`, oldest first: every business's, or only `business`'s if given."""
    if business is None:
        rows = tx.execute("SELECT * FROM staff_events WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
    else:
        rows = tx.execute("SELECT * FROM staff_events WHERE id > ? AND business = ? ORDER BY id LIMIT ?",
                          (after, business, limit))
    return [_event(r) for r in rows]


def recent_events(tx: Transaction, limit: int = 200, *, business: str | None = None) -> list[Event]:
    """The latest events, newest first: every business's, or only `business`'s if given."""
    if business is None:
        rows = tx.execute("SELECT * FROM staff_events ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = tx.execute("SELECT * FROM staff_events WHERE business = ? ORDER BY id DESC LIMIT ?", (business, limit))
    return [_event(r) for r in rows]


def last_event_id(tx: Transaction) -> int:
    rows = tx.execute("SELECT COALESCE(MAX(id), 0) AS n FROM staff_events")
    return int(rows[0]["n"])


def _event(r: dict[str, Any]) -> Event:
    return Event(r["id"], _dt(r["at"]), r["actor"], r["action"], r["subject"], json.loads(r["detail"]), r["business"])


def session_key(tx: Transaction) -> str:
    """The key that signs staff session cookies: made once, kept in the store, so logins survive restarts."""
    rows = tx.execute("SELECT value FROM staff_settings WHERE name = 'session_key'")
    if rows:
        return str(rows[0]["value"])
    key = secrets.token_urlsafe(48)
    tx.execute("INSERT INTO staff_settings (name, value) VALUES ('session_key', ?)", (key,))
    return key


def availability(tx: Transaction, business: str = DEFAULT_BUSINESS) -> Availability:
    """`business`'s menu day: what its staff marked sold out, and whether they closed it now."""
    rows = tx.execute("SELECT kind, key FROM staff_menu_day WHERE business = ?", (business,))
    closed, message = f"closed:{business}", f"closed_message:{business}"
    settings = {r["name"]: r["value"] for r in tx.execute(
        "SELECT name, value FROM staff_settings WHERE name IN (?, ?)", (closed, message))}
    return Availability(sold_out_items=frozenset(r["key"] for r in rows if r["kind"] == "item"),
                        sold_out_sizes=frozenset(r["key"] for r in rows if r["kind"] == "size"),
                        closed=settings.get(closed) == "1", closed_message=settings.get(message, ""))


def availabilities(tx: Transaction) -> dict[str, Availability]:
    """Every business's menu day in two queries (a business with nothing marked is not in the result:
    its day is the default `Availability()`). What each process polls to follow the others' changes."""
    marks: dict[str, list[dict[str, Any]]] = {}
    for r in tx.execute("SELECT business, kind, key FROM staff_menu_day"):
        marks.setdefault(r["business"], []).append(r)
    settings: dict[str, dict[str, str]] = {}
    for r in tx.execute("SELECT name, value FROM staff_settings"):  # a handful of rows; no LIKE (its % vs paramstyles)
        kind, _, business = str(r["name"]).partition(":")
        if kind in ("closed", "closed_message") and business:
            settings.setdefault(business, {})[kind] = r["value"]
    out = {}
    for business in set(marks) | set(settings):
        rows, named = marks.get(business, []), settings.get(business, {})
        out[business] = Availability(
            sold_out_items=frozenset(r["key"] for r in rows if r["kind"] == "item"),
            sold_out_sizes=frozenset(r["key"] for r in rows if r["kind"] == "size"),
            closed=named.get("closed") == "1", closed_message=named.get("closed_message", ""))
    return out


def request_call_action(tx: Transaction, call_sid: str, outcome: str, now: datetime) -> None:
    """Ask the process carrying `call_sid` to end its AI part with `outcome` ("transferred" or
    "ended_by_staff"); a second request for the same call replaces the first."""
    tx.execute("INSERT INTO staff_call_actions (call_sid, action, requested_at) VALUES (?, ?, ?)"
               " ON CONFLICT (call_sid) DO UPDATE SET action = excluded.action, requested_at = excluded.requested_at",
               (call_sid, outcome, _ts(now)))


def call_actions_pending(tx: Transaction) -> bool:
    return bool(tx.execute("SELECT call_sid FROM staff_call_actions LIMIT 1"))


def take_call_actions(tx: Transaction, call_sids: set[str], now: datetime, *,
                      forget_after_s: float = 600.0) -> dict[str, str]:
    """The requests for `call_sids` (this process's live calls), removed as they are taken; requests
    for calls no process took within `forget_after_s` (they ended meanwhile) are dropped."""
    rows = tx.execute("SELECT call_sid, action, requested_at FROM staff_call_actions")
    taken = {r["call_sid"]: r["action"] for r in rows if r["call_sid"] in call_sids}
    stale = [r["call_sid"] for r in rows if r["call_sid"] not in taken
             and (now - _dt(r["requested_at"])).total_seconds() > forget_after_s]
    for sid in [*taken, *stale]:
        tx.execute("DELETE FROM staff_call_actions WHERE call_sid = ?", (sid,))
    return taken


def set_sold_out(tx: Transaction, actor: str, kind: str, key: str, sold_out: bool, now: datetime,
                 business: str = DEFAULT_BUSINESS) -> int:
    if sold_out:
        tx.execute("INSERT INTO staff_menu_day (business, kind, key) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                   (business, kind, key))
    else:
        tx.execute("DELETE FROM staff_menu_day WHERE business = ? AND kind = ? AND key = ?", (business, kind, key))
    return record(tx, actor, "menu.sold_out" if sold_out else "menu.back", f"{kind}:{key}", {}, now, business)


def set_closed(tx: Transaction, actor: str, closed: bool, message: str, now: datetime,
               business: str = DEFAULT_BUSINESS) -> int:
    for name, value in ((f"closed:{business}", "1" if closed else "0"), (f"closed_message:{business}", message)):
        tx.execute("INSERT INTO staff_settings (name, value) VALUES (?, ?)"
                   " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))
    return record(tx, actor, "shop.closed" if closed else "shop.open", "shop", {"message": message} if closed else {},
                  now, business)
