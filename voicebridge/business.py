"""The business the phone line works for: which job it runs, with which settings.

This is where the engine meets the jobs: the daemon and the commands ask here for the job a
configuration names, for every job's tables (so one database can hold them all), and for the
lookups a job's tools need before they run (`tool_preparer`).

Which job: VOICEBRIDGE_JOB (pizza | appointments), else the business file's `job` key
(VOICEBRIDGE_BUSINESS, or VOICEBRIDGE_MENU for pizza's menu), else pizza. A file that says
another job than VOICEBRIDGE_JOB is an error, as is a bad file: both raise BusinessError or
MenuError with one line naming the file and the problem.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

import trio

from voicebridge.config import JOBS, Config
from voicebridge.engine.job import BusySource, Job, PrepareTool
from voicebridge.jobs.appointments.booking import BookingRequest, Found
from voicebridge.jobs.appointments.business import BusinessError, load_business, parse_toml
from voicebridge.jobs.appointments.job import SCHEMA as APPOINTMENTS_SCHEMA
from voicebridge.jobs.appointments.job import AppointmentsJob
from voicebridge.jobs.appointments.records import booked_between, feed_events, upcoming_by_name, upcoming_for_phone
from voicebridge.jobs.pizza.job import SCHEMA as PIZZA_SCHEMA
from voicebridge.jobs.pizza.job import PizzaJob
from voicebridge.ops.staff_store import SCHEMA as STAFF_SCHEMA
from voicebridge.ops.store import Store

log = logging.getLogger("voicebridge.business")

# Every job's own migrations, by job name: a database holds the tables of all of them.
# "staff": the staff page's accounts, event log and menu's day (voicebridge.ops.staff_store).
SCHEMAS: dict[str, tuple[tuple[str, ...], ...]] = {"pizza": PIZZA_SCHEMA, "appointments": APPOINTMENTS_SCHEMA,
                                                   "staff": STAFF_SCHEMA}
BUSY_TIMEOUT_S = 3.0  # how long a tool waits for the external calendar's busy times
FEED_PAST_DAYS = 30  # the iCalendar feed keeps bookings this long after they are over


def job_name(config: Config) -> str:
    """The job `config` chooses (see the module doc); BusinessError if the file and the setting disagree."""
    path = config.business_file
    declared = _declared_job(path) if path is not None else None
    if config.job is not None and declared is not None and declared != config.job:
        raise BusinessError(f"{path}: job: the file is for {declared!r}, but VOICEBRIDGE_JOB={config.job}")
    return config.job or declared or "pizza"


def _declared_job(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # the job's own loader says what is wrong with the file
    data = parse_toml(text, str(path))
    job = data.get("job")
    if job is None:
        return None
    if job not in JOBS:
        raise BusinessError(f"{path}: job: {job!r} is not a job (expected one of {', '.join(JOBS)})")
    return str(job)


def build_job(config: Config) -> Job:
    """The job `config` names, loaded and validated (a bad file raises MenuError/BusinessError with file and line)."""
    if job_name(config) == "appointments":
        return AppointmentsJob(business=load_business(config.business_file))
    from voicebridge.jobs.pizza.menu import load_menu

    return PizzaJob(menu=load_menu(config.business_file), tax_rate_bp=config.tax_rate_bp)


def tool_preparer(job: Job, store: Store, busy_source: BusySource | None = None, *,
                  clock: Callable[[], datetime] | None = None) -> PrepareTool | None:
    """What the call awaits before a tool runs, for jobs whose tools need the store or a calendar.

    For appointments: the stored bookings and the calendar's busy times of the days the tool is
    about, and the caller's upcoming bookings (by caller ID, or by the name asked for). A calendar
    that cannot be read in BUSY_TIMEOUT_S is logged and the tool answers that it cannot check now.
    """
    if not isinstance(job, AppointmentsJob):
        return None
    appointments = job

    async def prepare(task: Any, name: str, arguments: str) -> None:
        assert isinstance(task, BookingRequest)
        now = clock() if clock is not None else datetime.now(timezone.utc)
        lookup = appointments.lookup(task, name, arguments, now)
        if lookup is None:
            return
        window = lookup.window
        phone, who = lookup.phone, lookup.name

        def read(tx: Any) -> tuple[list[Any], list[Any], list[Any]]:
            booked = booked_between(tx, *window) if window is not None else []
            mine = upcoming_for_phone(tx, phone, now) if phone else []
            by_name = upcoming_by_name(tx, who, now) if who else []
            return booked, mine, by_name

        booked, mine, by_name = await store.read(read)
        external: list[tuple[datetime, datetime]] = []
        error = None
        if window is not None and busy_source is not None:
            try:
                with trio.fail_after(BUSY_TIMEOUT_S):
                    external = await busy_source.busy(*window)
            except Exception as exc:  # a calendar that is down must not end the call
                error = f"{type(exc).__name__}"
                log.warning("calendar busy times unavailable: %s", error, extra={"event": "calendar_unavailable"})
        appointments.provide(task, Found(window=window, booked=tuple(booked), external=tuple(external),
                                         calendar_error=error, mine=tuple(mine), by_name=tuple(by_name)))

    return prepare


def job_time_zone(job: Job) -> ZoneInfo | None:
    """The business's time zone, for jobs that have one (a calendar's all-day events are in it)."""
    return job.business.tz if isinstance(job, AppointmentsJob) else None


def feed_source(job: Job, store: Store, *, clock: Callable[[], datetime] | None = None
                ) -> Callable[[], Awaitable[Sequence[Mapping[str, Any]]]] | None:
    """The bookings the iCalendar feed serves (confirmed, not over for FEED_PAST_DAYS), or None for jobs without."""
    if not isinstance(job, AppointmentsJob):
        return None

    async def events() -> Sequence[Mapping[str, Any]]:
        since = (clock() if clock is not None else datetime.now(timezone.utc)) - timedelta(days=FEED_PAST_DAYS)
        return await store.read(lambda tx: feed_events(tx, since))

    return events
