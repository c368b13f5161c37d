"""Delivery of the jobs' events (a confirmed order, a booking, ...) from the outbox table.

Each outbox row names its target. Two workers share one retry loop (`_Delivery`):
`OutboxWorker` delivers the "webhook" rows, `CalendarWorker` the "calendar" rows (a booking's
event written to, or removed from, the business's CalDAV calendar; see its docstring).

`OutboxWorker.run` lives in the app's nursery. It POSTs each pending webhook row's stored JSON
body to ORDER_WEBHOOK_URL, signed:

    X-Voicebridge-Event: <event, e.g. order.created>
    Idempotency-Key: <row key>
    X-Voicebridge-Timestamp: <unix seconds>
    X-Voicebridge-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

A 2xx marks the row delivered. Anything else (refused, timeout, 4xx/5xx) is retried with
exponential backoff and full jitter (base 2 s, cap 5 min); after `max_attempts` failures
the row is dead, and stays in the table for `voicebridge resend`. Rows live in the database,
so pending ones (also one in flight when the process died) resume when a worker starts
again: delivery is at-least-once, and the receiver dedupes by Idempotency-Key. The calendar
rows retry the same way; a calendar write is idempotent by the event's UID.

Any number of processes may deliver from one database: a worker CLAIMS a row before sending
it (`Store.claim_due`: a lease of `lease_s`, by default four send timeouts and half a minute),
so no two send it at once; a process that dies mid-delivery loses its claim when the lease
runs out and another process sends the row again, with the same Idempotency-Key.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import json
import logging
import random
import urllib.parse
from datetime import datetime, timedelta, timezone
from importlib import metadata
from typing import Any, Awaitable, Callable, Mapping, Protocol

import httpx
import trio

from voicebridge.ops.store import OutboxRow, Store, StoreError

log = logging.getLogger("voicebridge.ops.outbox")

BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0
POLL_S = 30.0  # also pick up rows another process (voicebridge resend) made due
BATCH = 100  # rows tried per pass before sleeping again


def _version() -> str:
    try:
        return metadata.version("voicebridge")
    except metadata.PackageNotFoundError:
        return "dev"


USER_AGENT = f"voicebridge/{_version()}"


def utc_now() -> datetime:
    """The wall clock, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def backoff_delay_s(
    failures: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full jitter: rand() x min(cap, base x 2^(failures-1)), rand() in [0, 1)."""
    if failures < 1:
        raise ValueError(f"failures must be at least 1, got {failures}")
    ceiling = min(cap_s, base_s * 2.0 ** min(failures - 1, 60))
    return rand() * ceiling


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Voicebridge-Signature value: "sha256=" + hex HMAC-SHA256 of b"{timestamp}." + body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def redact_url(url: str) -> str:
    """scheme://host[:port] only: paths and queries may carry tokens."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _what(row: OutboxRow) -> str:
    """"order #12" for the subject "order:12"."""
    kind, _, number = row.subject.partition(":")
    return f"{kind} #{number}" if number else row.subject


def _resend_hint(row: OutboxRow) -> str:
    kind, _, number = row.subject.partition(":")
    return f"`voicebridge resend {number}`" if kind == "order" else f"`voicebridge resend {row.subject}`"


class Undeliverable(Exception):
    """A row its target can never take (a malformed payload, an unknown event): dead at once."""


class _Delivery(abc.ABC):
    """The delivery loop every target shares: due rows in, retries with backoff, dead rows kept.

    A subclass names its `target` (the outbox column) and `label` (for the log), and sends one
    row in `_send`: None when delivered, else a short error (retried), or `Undeliverable`.
    """

    target = ""
    label = ""
    in_subject_order = False  # True: a row waits while an older pending row about its subject waits

    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 8,
        timeout_s: float = 10.0,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        poll_s: float = POLL_S,
        now: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
        lease_s: float | None = None,
        owner: str | None = None,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if timeout_s <= 0 or backoff_base_s <= 0 or backoff_cap_s <= 0 or poll_s <= 0:
            raise ValueError("timeout_s, backoff_base_s, backoff_cap_s and poll_s must be positive")
        self.store = store
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.poll_s = poll_s
        self._now = now
        self._rand = rand
        self._on_result = on_result  # told "delivered", "retry" or "dead" after each attempt (metrics)
        self._wakeup = trio.Event()
        # a claim outlives the longest send (`_send` is bounded by a few timeouts) with room to mark it
        self.lease_s = lease_s if lease_s is not None else 4 * timeout_s + 30.0
        if self.lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.owner = owner or store.instance_id
        # Told when a row is delivered or given up on (row, "delivered" | "dead"): the staff board shows it.
        self.on_settled: Callable[[OutboxRow, str], Awaitable[None]] | None = None
        self._businesses: tuple[str, ...] | None = None  # only these businesses' rows (None: all)

    async def _settled(self, row: OutboxRow, state: str) -> None:
        if self.on_settled is not None:
            try:
                await self.on_settled(row, state)
            except Exception as exc:  # the delivery is recorded; only the board's news of it is lost
                log.error("could not report a settled delivery: %s", type(exc).__name__)

    def wake(self) -> None:
        """A row was committed or revived: look for due rows now."""
        self._wakeup.set()

    async def _deliver_forever(self) -> None:
        while True:
            self._wakeup = trio.Event()
            try:
                await self.deliver_due()
                delay = await self._sleep_for()
            except StoreError as exc:
                log.error("%s delivery paused: %s", self.label, exc)
                delay = min(self.poll_s, max(self.backoff_base_s, 1.0))
            with trio.move_on_after(delay):
                await self._wakeup.wait()

    async def _sleep_for(self) -> float:
        due = await self.store.next_due_time((self.target,), in_subject_order=self.in_subject_order,
                                             businesses=self._businesses)
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.0, (due - self._now()).total_seconds()))

    async def deliver_due(self) -> int:
        """Attempt every row due now (at most BATCH); returns how many were attempted."""
        for count in range(BATCH):
            row = await self.store.claim_due(self._now(), (self.target,), owner=self.owner, lease_s=self.lease_s,
                                             in_subject_order=self.in_subject_order, businesses=self._businesses)
            if row is None:
                return count
            await self._attempt(row)
        return BATCH

    @abc.abstractmethod
    async def _send(self, row: OutboxRow) -> str | None:
        """Send one row; None when it landed, else a short error for the table and the log."""

    async def _attempt(self, row: OutboxRow) -> None:
        try:
            state = await self._attempt_claimed(row)
        except trio.Cancelled:
            # stopping (a drain, a restart): hand the claim back so another process need not wait for the
            # lease; if the answer was lost in flight the row is sent again, deduped by its key
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                try:
                    await self.store.release_claim(row.id, claimed_by=self.owner)
                except StoreError as exc:
                    log.warning("%s: the claim stays until its lease runs out (%s)", _what(row), exc)
            raise
        if self._on_result is not None:
            self._on_result(state)

    async def _attempt_claimed(self, row: OutboxRow) -> str:
        attempt = row.attempts + 1
        try:
            error = await self._send(row)
        except Undeliverable as exc:
            await self.store.mark_dead(row.id, error=f"undeliverable: {exc}", claimed_by=self.owner)
            log.error("%s cannot be delivered to the %s, ever (%s)", _what(row), self.label, exc)
            await self._settled(row, "dead")
            return "dead"
        if error is None:
            if await self.store.mark_delivered(row.id, delivered_at=self._now(), claimed_by=self.owner):
                log.info("%s delivered to the %s (attempt %d)", _what(row), self.label, attempt)
            else:
                log.warning("%s delivered to the %s after its claim ran out (another process may send it again; "
                            "the receiver dedupes by Idempotency-Key)", _what(row), self.label)
            await self._settled(row, "delivered")
            return "delivered"
        elif attempt >= self.max_attempts:
            await self.store.mark_dead(row.id, error=error, claimed_by=self.owner)
            log.error("%s %s delivery failed %d times, giving up (%s)%s", _what(row), self.label, attempt, error,
                      self._resend_hint(row))
            await self._settled(row, "dead")
            return "dead"
        else:
            delay = backoff_delay_s(attempt, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s, rand=self._rand)
            await self.store.mark_retry(row.id, next_attempt_at=self._now() + timedelta(seconds=delay), error=error,
                                        claimed_by=self.owner)
            log.warning("%s %s attempt %d failed (%s); retrying in %.1f s", _what(row), self.label, attempt, error,
                        delay)
            return "retry"

    def _resend_hint(self, row: OutboxRow) -> str:
        return ""


class OutboxWorker(_Delivery):
    """Delivers outbox rows to the shop's webhook until cancelled."""

    target = "webhook"
    label = "webhook"

    def __init__(
        self,
        store: Store,
        url: str | None,
        secret: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        routes: Mapping[str, tuple[str, str]] | None = None,
        **options: Any,
    ) -> None:
        """`routes` (business slug -> (url, secret)), when given, sends each business's rows to
        its own webhook and leaves the rows of businesses without one pending; `url` is then unused."""
        if url and not secret:
            raise ValueError("ORDER_WEBHOOK_SECRET is required when ORDER_WEBHOOK_URL is set")
        for slug, (route_url, route_secret) in (routes or {}).items():
            if not route_url or not route_secret:
                raise ValueError(f"business {slug}: a webhook needs both a URL and a secret")
        super().__init__(store, **options)
        self.url = url
        self._secret = secret or ""
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._routes = dict(routes) if routes is not None else None
        if self._routes is not None:
            self._businesses = tuple(self._routes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver due rows, sleep until the next is due (or `wake`), forever.

        Without a URL it logs that once and returns: rows stay pending.
        """
        if not (self._routes if self._routes is not None else self.url):
            log.warning("ORDER_WEBHOOK_URL is not set: confirmed orders stay pending in the outbox")
            task_status.started()
            return
        async with httpx.AsyncClient(transport=self._transport, timeout=self.timeout_s, follow_redirects=False) as client:
            self._client = client
            for where in ([url for url, _ in self._routes.values()] if self._routes is not None else [self.url]):
                log.info("webhook delivery to %s started", redact_url(where or ""))
            task_status.started()
            try:
                await self._deliver_forever()
            finally:
                self._client = None

    def _resend_hint(self, row: OutboxRow) -> str:
        return "; " + _resend_hint(row) + " retries it"

    async def _send(self, row: OutboxRow) -> str | None:
        """POST one row; None on 2xx, else a short error for the table and the log."""
        url, secret = self._routes[row.business] if self._routes is not None else (self.url, self._secret)
        assert url is not None and self._client is not None
        client = self._client
        body = row.payload.encode()
        timestamp = int(self._now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "X-Voicebridge-Event": row.event,
            "Idempotency-Key": row.idempotency_key,
            "X-Voicebridge-Timestamp": str(timestamp),
            "X-Voicebridge-Signature": sign(secret, timestamp, body),
            "User-Agent": USER_AGENT,
        }
        try:
            with trio.fail_after(self.timeout_s):  # one deadline for the whole exchange
                response = await client.post(url, content=body, headers=headers)
        except trio.TooSlowError:
            return f"timed out after {self.timeout_s:g} s"
        except httpx.TimeoutException:
            return f"timed out after {self.timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            detail = str(exc).strip() or type(exc).__name__
            return f"{type(exc).__name__}: {detail}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


class CalendarTarget(Protocol):
    """What the calendar worker needs of a calendar (`voicebridge.edges.calendar.CalDavCalendar`).

    Both raise ValueError for a payload that can never be stored, any other exception for a
    failure worth retrying.
    """

    async def put_event(self, payload: Mapping[str, Any]) -> None: ...

    async def delete_event(self, uid: str) -> None: ...


CALENDAR_EVENTS = ("calendar.put", "calendar.delete")


class CalendarWorker(_Delivery):
    """Delivers the outbox rows with target "calendar" to the business's calendar until cancelled.

    One worker serves every business: with `routes` (business slug -> calendar) each row goes to
    its own business's calendar, and the rows of a business without one stay pending (its
    bookings are only in its feed); with one `calendar`, every row goes there.

    `calendar.put` {"uid", "start", "end", "tz", "summary", "description", "sequence"} creates or
    replaces the event; `calendar.delete` {"uid"} removes it. Rows about one subject (a booking)
    are delivered in the order they were queued: a move retried late never lands after the
    cancellation that followed it. The calendar is handed in (the daemon builds it), so the
    outbox knows no CalDAV.
    """

    target = "calendar"
    label = "calendar"
    in_subject_order = True

    def __init__(self, store: Store, calendar: CalendarTarget | None = None, *,
                 routes: Mapping[str, CalendarTarget] | None = None, **options: Any) -> None:
        if (calendar is None) == (routes is None) or routes == {}:
            raise ValueError("a calendar worker needs one calendar, or calendars by business")
        super().__init__(store, **options)
        self.calendar = calendar
        self._routes = dict(routes) if routes is not None else None
        if self._routes is not None:
            self._businesses = tuple(self._routes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver due calendar rows, sleep until the next is due (or `wake`), forever."""
        if self._routes is None:
            log.info("calendar delivery to %r started", self.calendar)
        for slug, calendar in (self._routes or {}).items():
            log.info("calendar delivery to %r started for %s", calendar, slug)
        task_status.started()
        await self._deliver_forever()

    async def _send(self, row: OutboxRow) -> str | None:
        if row.event not in CALENDAR_EVENTS:
            raise Undeliverable(f"unknown calendar event {row.event!r} (known: {', '.join(CALENDAR_EVENTS)})")
        try:
            payload = json.loads(row.payload)
        except ValueError:
            raise Undeliverable("the payload is not JSON") from None
        if not isinstance(payload, dict):
            raise Undeliverable("the payload is not a JSON object")
        uid = payload.get("uid")
        if not isinstance(uid, str) or not uid:
            raise Undeliverable(f"the payload has no uid (got {uid!r})")
        calendar = self._routes[row.business] if self._routes is not None else self.calendar
        assert calendar is not None  # only routed businesses' rows are claimed
        try:
            with trio.fail_after(self.timeout_s * 3):  # the calendar bounds each request; this bounds it all
                if row.event == "calendar.put":
                    await calendar.put_event(payload)
                else:
                    await calendar.delete_event(uid)
        except ValueError as exc:
            raise Undeliverable(str(exc)) from None
        except trio.TooSlowError:
            return f"timed out after {self.timeout_s * 3:g} s"
        except Exception as exc:
            detail = str(exc).strip() or type(exc).__name__
            return detail[:300]
        return None
