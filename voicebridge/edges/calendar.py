"""The business's real calendar over CalDAV (Nextcloud, Fastmail, iCloud, Google, Radicale, ...).

`CalDavCalendar` talks to ONE calendar collection (`VOICEBRIDGE_CALDAV_URL`):
- `busy(start, end)`: the UTC intervals of every event in the range, including events entered
  by hand, recurring events expanded, all-day events blocking their whole day in the business's
  zone; cancelled and "free" (TRANSP:TRANSPARENT) events do not block.
- `put_event(payload)`: create or replace the booking's event. The resource name is derived
  from the UID, so a retry after an unknown outcome (timeout, a crash after the server stored
  it) PUTs the same resource again instead of adding a second event.
- `delete_event(uid)`: remove it; already gone (404) counts as done.

The `caldav` library is synchronous (requests-style HTTP). Each operation therefore runs in a
worker thread (`trio.to_thread.run_sync`) under a Trio deadline, with the same timeout given to
the HTTP layer so an abandoned thread ends on its own; a capacity limiter bounds the threads.
Each operation opens its own `DAVClient` (a requests session is not shared between threads).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import partial
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit

import trio

from voicebridge.edges.ical import event_calendar, parse_event

log = logging.getLogger("voicebridge.edges.calendar")

T = TypeVar("T")
MAX_THREADS = 4
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,120}")


class CalendarError(Exception):
    """The calendar could not be read or written; the message is short and holds no secret."""


def resource_name(uid: str) -> str:
    """The event's file name in the collection, the same for every attempt with this UID."""
    if _SAFE_NAME.fullmatch(uid) and not uid.startswith("."):
        return uid + ".ics"
    return "vb-" + hashlib.sha256(uid.encode()).hexdigest()[:40] + ".ics"


def _as_utc(value: date | datetime, zone: tzinfo) -> datetime:
    """An iCalendar DTSTART/DTEND as an aware UTC datetime: dates and floating times are in `zone`."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(0, 0))
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(timezone.utc)


def busy_interval(component: Any, zone: tzinfo) -> tuple[datetime, datetime] | None:
    """The UTC interval one expanded VEVENT blocks, or None when it blocks nothing."""
    if str(component.get("status", "")).upper() == "CANCELLED":
        return None
    if str(component.get("transp", "")).upper() == "TRANSPARENT":
        return None
    if component.get("dtstart") is None:
        return None
    start_value = component.get("dtstart").dt
    end_prop, duration = component.get("dtend"), component.get("duration")
    if end_prop is not None:
        end_value = end_prop.dt
    elif duration is not None:
        end_value = start_value + duration.dt
    elif isinstance(start_value, datetime):
        end_value = start_value  # RFC 5545: a date-time with no end takes no time
    else:
        end_value = start_value + timedelta(days=1)  # a date with no end is that one day
    start, end = _as_utc(start_value, zone), _as_utc(end_value, zone)
    return (start, end) if end > start else None


class CalDavCalendar:
    """One CalDAV calendar collection. `zone` is the business's time zone (for all-day events)."""

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 zone: tzinfo = timezone.utc, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the calendar URL must be http(s)://host/..., got {parts.scheme}://{parts.hostname}")
        if parts.username or parts.password:
            raise ValueError("put the calendar's user name and password in their own settings, not in the URL")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url if url.endswith("/") else url + "/"
        self.zone = zone
        self.timeout_s = timeout_s
        self._username = username
        self._password = password
        self._auth_type: str | None = None  # learnt from the first 401, then sent up front
        self._limiter = trio.CapacityLimiter(MAX_THREADS)
        # caldav logs request and response bodies at DEBUG: callers' names and numbers.
        logging.getLogger("caldav").setLevel(max(logging.getLogger("caldav").level, logging.INFO))

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        return f"CalDavCalendar({parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''})"

    @contextmanager
    def _client(self) -> Iterator[Any]:
        """A DAVClient for one operation. The login scheme the server asked for the first time is
        then sent with the first request, saving a 401 round trip (and the pause some servers add
        after one) on every later operation."""
        from caldav.davclient import DAVClient
        from caldav.lib.error import AuthorizationError

        client = DAVClient(url=self.url, username=self._username, password=self._password,
                           auth_type=self._auth_type if self._username else None,
                           timeout=math.ceil(self.timeout_s), enable_rfc6764=False, rate_limit_handle=False)
        with client:
            try:
                yield client
            except AuthorizationError:
                self._auth_type = None  # ask the server again next time
                raise
            kind = type(getattr(client, "auth", None)).__name__
            if self._username and kind in ("HTTPBasicAuth", "HTTPDigestAuth"):
                self._auth_type = "basic" if kind == "HTTPBasicAuth" else "digest"

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            with trio.fail_after(self.timeout_s * 2):  # an operation is at most two requests
                return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise CalendarError(f"{what}: no answer within {self.timeout_s * 2:g} s") from None
        except CalendarError:
            raise
        except Exception as exc:
            raise CalendarError(f"{what}: {_describe(exc)}") from None

    # -- reads ------------------------------------------------------------------------------

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Sorted UTC intervals of the events overlapping [start, end) (aware datetimes)."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("busy() needs aware datetimes")
        if end <= start:
            return []
        return await self._run("reading the calendar", partial(self._busy_sync, start, end))

    def _busy_sync(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        start_utc, end_utc = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
        with self._client() as client:
            calendar = client.calendar(url=self.url)
            found = calendar.search(start=start_utc, end=end_utc, event=True, expand=True)
            intervals = set()
            for obj in found:
                for component in obj.icalendar_instance.walk("VEVENT"):
                    interval = busy_interval(component, self.zone)
                    if interval is not None and interval[0] < end_utc and interval[1] > start_utc:
                        intervals.add(interval)
        return sorted(intervals)

    # -- writes -----------------------------------------------------------------------------

    async def put_event(self, payload: Mapping[str, Any]) -> None:
        """Create or replace the booking's event. ValueError for a payload that can never be stored."""
        event = parse_event(payload)
        body = event_calendar(event, stamp=datetime.now(timezone.utc)).decode()
        await self._run(f"writing event {event.uid}", partial(self._put_sync, event.uid, body))

    def _put_sync(self, uid: str, body: str) -> None:
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        with self._client() as client:
            href = self.url + resource_name(uid)
            status = client.put(href, body, headers).status
            if 200 <= status < 300:
                return
            if status in (403, 409, 412):
                # The UID may already live under another name (entered elsewhere, or renamed by
                # the server): replace it where it is rather than add a second copy.
                existing = self._find_href(client, uid)
                if existing and existing != href:
                    status = client.put(existing, body, headers).status
                    if 200 <= status < 300:
                        return
            raise CalendarError(f"writing event {uid}: HTTP {status}")

    async def delete_event(self, uid: str) -> None:
        """Remove the booking's event; an event that is not there counts as removed."""
        if not isinstance(uid, str) or not uid:
            raise ValueError(f"uid must be a non-empty string, got {uid!r}")
        await self._run(f"deleting event {uid}", partial(self._delete_sync, uid))

    def _delete_sync(self, uid: str) -> None:
        with self._client() as client:
            status = client.delete(self.url + resource_name(uid)).status
            if status == 404:  # not under our name: perhaps under another one
                existing = self._find_href(client, uid)
                if existing is None:
                    return
                status = client.delete(existing).status
            if not (200 <= status < 300 or status in (404, 410)):
                raise CalendarError(f"deleting event {uid}: HTTP {status}")

    def _find_href(self, client: Any, uid: str) -> str | None:
        import caldav.lib.error

        try:
            obj = client.calendar(url=self.url).event_by_uid(uid)
        except caldav.lib.error.NotFoundError:
            return None
        return str(obj.url)


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _describe(exc: BaseException) -> str:
    """A short reason for the outbox's last_error and the log, without the HTTP stack's nesting."""
    text = str(exc).strip()
    kind = type(exc).__name__
    if "Timeout" in kind:
        return f"{kind}: the calendar server did not answer in time"
    if kind == "ConnectionError" or "NewConnectionError" in text:
        reason = _ERRNO.search(text)
        return f"ConnectionError: cannot reach the calendar server ({reason.group(1).strip() if reason else kind})"
    first = text.splitlines()[0] if text else ""
    return f"{kind}: {first}"[:300] if first else kind
