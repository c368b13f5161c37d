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
import os
import re
import tomllib
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence, cast
from zoneinfo import ZoneInfo

import attrs
import trio

from voicebridge.config import JOBS, VOICES, Config, ConfigError, _caldav_url, _feed_token, _http_url, _phone, _rate_bp
from voicebridge.engine.job import BusySource, Job, PrepareTool
from voicebridge.i18n import DEFAULT_LANGUAGES, LanguageError, Translators, load_translators
from voicebridge.ops.logs import mask_number
from voicebridge.jobs.appointments.booking import BookingRequest, Found
from voicebridge.jobs.appointments.business import BusinessError, business_from_data, load_business, parse_toml
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
        business = load_business(config.business_file)
        return AppointmentsJob(business=business,
                               translators=translators_for(business.languages, config, business.source))
    from voicebridge.jobs.pizza.menu import load_menu

    menu = load_menu(config.business_file)
    return PizzaJob(menu=menu, tax_rate_bp=config.tax_rate_bp,
                    translators=translators_for(menu.languages, config, menu.source))


def packaged_business(config: Config, job: str) -> str | None:
    """The name of `config`'s business file if it is one packaged with `job` (a recording names it so
    that a replay runs the same business anywhere); None for the default or a file of the shop's own."""
    path = config.business_file
    if path is None:
        return None
    folder = Path(str(resources.files(f"voicebridge.jobs.{job}")))
    try:
        packaged = path.resolve().parent == folder.resolve() and path.suffix == ".toml"
    except OSError:
        return None
    return path.name if packaged else None


def translators_for(declared: tuple[str, ...] | None, config: Config, source: str) -> Translators:
    """The business's languages with their catalogs: its file's `languages`, else VOICEBRIDGE_LANGUAGES, else en."""
    try:
        return load_translators(declared or config.languages or DEFAULT_LANGUAGES, f"{source}: languages")
    except LanguageError as exc:
        raise BusinessError(str(exc)) from None


def _appointments(job: Job) -> AppointmentsJob | None:
    """The appointments job `job` is (also under a business file's extra instructions), or None."""
    base = job._job if isinstance(job, _ExtraInstructions) else job
    return base if isinstance(base, AppointmentsJob) else None


def tool_preparer(job: Job, store: Store, busy_source: BusySource | None = None, *,
                  clock: Callable[[], datetime] | None = None, business: str = "default") -> PrepareTool | None:
    """What the call awaits before a tool runs, for jobs whose tools need the store or a calendar.

    For appointments: `business`'s stored bookings and its calendar's busy times of the days the
    tool is about, and the caller's upcoming bookings there (by caller ID, or by the name asked
    for). A calendar that cannot be read in BUSY_TIMEOUT_S is logged and the tool answers that it
    cannot check now.
    """
    found_job = _appointments(job)
    if found_job is None:
        return None
    appointments = found_job

    async def prepare(task: Any, name: str, arguments: str) -> None:
        assert isinstance(task, BookingRequest)
        now = clock() if clock is not None else datetime.now(timezone.utc)
        lookup = appointments.lookup(task, name, arguments, now)
        if lookup is None:
            return
        window = lookup.window
        phone, who = lookup.phone, lookup.name

        def read(tx: Any) -> tuple[list[Any], list[Any], list[Any]]:
            booked = booked_between(tx, *window, business=business) if window is not None else []
            mine = upcoming_for_phone(tx, phone, now, business=business) if phone else []
            by_name = upcoming_by_name(tx, who, now, business=business) if who else []
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
    appointments = _appointments(job)
    return appointments.business.tz if appointments is not None else None


def feed_source(job: Job, store: Store, *, clock: Callable[[], datetime] | None = None, business: str = "default"
                ) -> Callable[[], Awaitable[Sequence[Mapping[str, Any]]]] | None:
    """`business`'s bookings the iCalendar feed serves (confirmed, not over for FEED_PAST_DAYS), or
    None for jobs without."""
    if _appointments(job) is None:
        return None

    async def events() -> Sequence[Mapping[str, Any]]:
        since = (clock() if clock is not None else datetime.now(timezone.utc)) - timedelta(days=FEED_PAST_DAYS)
        return await store.read(lambda tx: feed_events(tx, since, business=business))

    return events


# -- many businesses, one deployment ---------------------------------------------------------------
# `VOICEBRIDGE_BUSINESSES` names business files (or directories of them), each mapping its Twilio
# numbers (the webhook's `To`) to a job, that job's settings, and its own webhook, transfer number,
# voice and extra instructions. Without it there is one business, `default`, built from the
# environment as above, answering every number.

DEFAULT_SLUG = "default"
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class BusinessesError(BusinessError, ConfigError):
    """A business file of VOICEBRIDGE_BUSINESSES is missing, malformed or clashes with another."""


def _pizza_from_settings(settings: dict[str, Any], source: Path, config: Config) -> Job:
    """A pizza job from a business file: its menu inline (the menu's own tables), in a `menu = "file"`
    next to it, or else the menu `config` names."""
    from voicebridge.jobs.pizza.menu import load_menu, menu_from_data

    menu_file = settings.pop("menu", None)
    if menu_file is not None and settings:
        raise BusinessesError(f"{source}: either `menu = \"file\"` or the menu's tables inline, not both")
    if menu_file is not None:
        if not isinstance(menu_file, str) or not menu_file.strip():
            raise BusinessesError(f"{source}: menu: expected a file name")
        menu = load_menu((source.parent / menu_file).expanduser())
    elif settings:
        menu = menu_from_data(settings, str(source))
    else:
        menu = load_menu(config.business_file)
    return PizzaJob(menu=menu, tax_rate_bp=config.tax_rate_bp,
                    translators=translators_for(menu.languages, config, menu.source))


def _appointments_from_settings(settings: dict[str, Any], source: Path, config: Config) -> Job:
    """An appointments job from a business file: its name, time zone, hours, closures and services
    inline, as in an appointments business file (voicebridge.jobs.appointments.business)."""
    return AppointmentsJob(business=business_from_data(settings, str(source)))


# How a business file's job settings become a job, by job name (each job adds its builder here).
JOB_BUILDERS: dict[str, Callable[[dict[str, Any], Path, Config], Job]] = {
    "pizza": _pizza_from_settings, "appointments": _appointments_from_settings}


class _ExtraInstructions:
    """A business's job with its own words appended to the job's instructions (all else the job's)."""

    def __init__(self, job: Job, extra: str) -> None:
        self._job = job
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def instructions(self, now: datetime) -> str:
        return f"{self._job.instructions(now)}\n\n{self._extra}"


@attrs.frozen
class Business:
    """One business: its numbers, its job, and the deployment's settings with its own overrides
    (`config.voice`, `.transfer_number`, `.order_webhook_url`/`_secret`, `.tax_rate_bp`)."""

    slug: str
    numbers: tuple[str, ...]
    job: Job
    config: Config
    source: str | None = None  # the business file, or None for the default business


@attrs.frozen
class Businesses:
    """Which business answers a Twilio number. With no business files, the default answers all."""

    all: tuple[Business, ...]
    by_number: dict[str, Business]
    catch_all: Business | None = None  # the zero-configuration default business

    @classmethod
    def single(cls, config: Config, job: Job) -> Businesses:
        default = Business(DEFAULT_SLUG, (), job, config)
        return cls((default,), {}, default)

    @classmethod
    def load(cls, config: Config, environ: Mapping[str, str] | None = None) -> Businesses:
        """The businesses of `config.businesses` (files or directories), or the default business.
        `environ` (default `os.environ`) holds the variables the files' `[calendar]` tables name."""
        if not config.businesses:
            return cls.single(config, build_job(config))
        found: list[Business] = []
        by_number: dict[str, Business] = {}
        by_slug: dict[str, Business] = {}
        by_feed: dict[str, Business] = {}
        for path in _business_files(config.businesses):
            business = load_business_file(path, config, environ)
            if business.slug in by_slug:
                raise BusinessesError(f"{path}: slug {business.slug!r} is also {by_slug[business.slug].source}'s")
            by_slug[business.slug] = business
            feed = business.config.calendar_feed_token
            if feed is not None and feed in by_feed:  # a feed URL must name one business's bookings
                raise BusinessesError(f"{path}: calendar.feed_token_env: the same token as {by_feed[feed].source}'s")
            if feed is not None:
                by_feed[feed] = business
            for number in business.numbers:
                other = by_number.get(number)
                if other is not None:
                    raise BusinessesError(f"{path}: number {mask_number(number)} is also {other.source}'s")
                by_number[number] = business
            found.append(business)
        return cls(tuple(found), by_number)

    @property
    def default(self) -> Business:
        """The business used where no number says which (the first one when there are files)."""
        return self.catch_all or self.all[0]

    def for_number(self, to: str | None) -> Business | None:
        """The business whose number `to` is, the default business, or None (refuse the call)."""
        found = self.by_number.get((to or "").strip())
        return found if found is not None else self.catch_all

    def get(self, slug: str | None) -> Business | None:
        for business in self.all:
            if business.slug == slug:
                return business
        return None

    def __iter__(self) -> Iterator[Business]:
        return iter(self.all)


def _business_files(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.glob("*.toml") if p.is_file())
            if not inside:
                raise BusinessesError(f"VOICEBRIDGE_BUSINESSES: no *.toml business file in {path}")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise BusinessesError(f"VOICEBRIDGE_BUSINESSES: no such file or directory: {path}")
    return files


def load_business_file(path: Path, config: Config, environ: Mapping[str, str] | None = None) -> Business:
    """One business file; BusinessError if bad. The deployment's keys (`slug`, `numbers`, `job`,
    `webhook_url`, `webhook_secret`, `transfer_number`, `voice`, `tax_rate`, `instructions`,
    `[calendar]`) are taken out; every other key is the job's own settings (JOB_BUILDERS).

    `[calendar]` (appointments only; see `_calendar`) is the business's own CalDAV calendar and
    iCalendar feed; without it the business has neither: the deployment's VOICEBRIDGE_CALDAV_* and
    VOICEBRIDGE_CALENDAR_FEED_TOKEN are the zero-configuration default business's alone, so one
    business's bookings never land in a calendar another business's settings name."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BusinessesError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BusinessesError(f"{path}: not a valid TOML file: {exc}") from None
    slug = data.pop("slug", path.stem.lower())
    if not isinstance(slug, str) or not SLUG.fullmatch(slug):
        raise BusinessesError(f"{path}: slug: expected 1-40 lowercase letters, digits or '-', got {slug!r}")
    numbers = data.pop("numbers", None)
    if not isinstance(numbers, list) or not numbers:
        raise BusinessesError(f"{path}: numbers: expected a list of the Twilio numbers this business answers")
    checked = tuple(_field(path, "numbers", _phone, n) for n in numbers)
    if len(set(checked)) != len(checked):
        raise BusinessesError(f"{path}: numbers: a number is listed twice")
    job_name = data.pop("job", "pizza")
    if job_name not in JOB_BUILDERS:
        raise BusinessesError(f"{path}: job: expected one of {', '.join(JOB_BUILDERS)}, got {job_name!r}")
    changes: dict[str, Any] = {}
    for key, field, parse in (("webhook_url", "order_webhook_url", _http_url),
                              ("webhook_secret", "order_webhook_secret", _nonempty_text),
                              ("transfer_number", "transfer_number", _phone),
                              ("voice", "voice", _voice),
                              ("tax_rate", "tax_rate_bp", _rate_bp)):
        if key in data:
            changes[field] = _field(path, key, parse, data.pop(key))
    extra = data.pop("instructions", None)
    if extra is not None and (not isinstance(extra, str) or not extra.strip()):
        raise BusinessesError(f"{path}: instructions: expected text")
    calendar = data.pop("calendar", None)
    if calendar is not None and job_name != "appointments":
        raise BusinessesError(f"{path}: calendar: only an appointments business has a calendar (this is {job_name!r})")
    changes.update(_calendar(path, calendar, os.environ if environ is None else environ))
    own = attrs.evolve(config, **changes)
    if "order_webhook_url" in changes and "order_webhook_secret" not in changes:
        raise BusinessesError(f"{path}: webhook_secret: needed with webhook_url (deliveries are signed)")
    if own.order_webhook_url and not own.order_webhook_secret:
        raise BusinessesError(f"{path}: webhook_secret: not set, but a webhook URL is")
    try:
        job = JOB_BUILDERS[job_name](data, path, own)
    except BusinessError:
        raise
    except Exception as exc:  # a job's own settings error (MenuError names file and line)
        raise BusinessesError(str(exc)) from None
    if extra:
        job = cast(Job, _ExtraInstructions(job, extra.strip()))
    return Business(slug, checked, job, own, str(path))


CALENDAR_KEYS = ("url", "username", "password_env", "feed_token_env")


def _calendar(path: Path, table: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """A business file's `[calendar]` as Config fields (all None without one).

        [calendar]
        url = "https://dav.example.com/salon/bookings/"   # its CalDAV calendar (optional)
        username = "salon"
        password_env = "SALON_CALDAV_PASSWORD"           # the environment variable holding the password
        feed_token_env = "SALON_FEED_TOKEN"               # ...the feed's secret URL token (optional)

    Secrets are named, not written: business files get copied, versioned and shown around, and the
    environment (a systemd EnvironmentFile, credentials) is where this deployment keeps every other
    secret. A named variable that is not set is an error, never a calendar without its password.
    """
    fields: dict[str, Any] = {"caldav_url": None, "caldav_username": None, "caldav_password": None,
                              "calendar_feed_token": None}
    if table is None:
        return fields
    if not isinstance(table, dict):
        raise BusinessesError(f"{path}: calendar: expected a table ([calendar])")
    for key in table:
        if key not in CALENDAR_KEYS:
            hint = " (a password is never written in the file: name its variable with password_env)" \
                if key == "password" else ""
            raise BusinessesError(f"{path}: calendar.{key}: unknown key (allowed: {', '.join(CALENDAR_KEYS)}){hint}")

    def secret(key: str, parse: Callable[[str], str]) -> str | None:
        name = table.get(key)
        if name is None:
            return None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BusinessesError(f"{path}: calendar.{key}: expected an environment variable's name, got {name!r}")
        value = environ.get(name, "").strip()
        if not value:
            raise BusinessesError(f"{path}: calendar.{key}: the environment variable {name} is not set")
        try:
            return parse(value)
        except ValueError as exc:
            raise BusinessesError(f"{path}: calendar.{key}: {name} {exc}") from None

    if "url" in table:
        fields["caldav_url"] = _field(path, "calendar.url", _caldav_url, table["url"])
    if "username" in table:
        fields["caldav_username"] = _field(path, "calendar.username", _nonempty_text, table["username"])
    fields["caldav_password"] = secret("password_env", _nonempty_text)
    fields["calendar_feed_token"] = secret("feed_token_env", _feed_token)
    if bool(fields["caldav_username"]) != bool(fields["caldav_password"]):
        missing = "password_env" if fields["caldav_username"] else "username"
        raise BusinessesError(f"{path}: calendar.{missing}: needed with the other (the calendar's login)")
    if fields["caldav_username"] and not fields["caldav_url"]:
        raise BusinessesError(f"{path}: calendar.url: needed with a username")
    return fields


def _field(path: Path, key: str, parse: Callable[[str], Any], value: Any) -> Any:
    if isinstance(value, (int, float)) and key == "tax_rate":
        value = str(value)
    if not isinstance(value, str):
        raise BusinessesError(f"{path}: {key}: expected text, got {type(value).__name__}")
    try:
        return parse(value.strip())
    except ValueError as exc:
        raise BusinessesError(f"{path}: {key}: {exc}") from None


def _nonempty_text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _voice(raw: str) -> str:
    if raw not in VOICES:
        raise ValueError(f"expected one of {', '.join(VOICES)}")
    return raw
