"""The businesses the phone line works for: which job each runs, with which settings.

This is where the engine meets the jobs: the daemon and the commands ask here for the job a
configuration names, and for every job's tables (so one database can hold them all).

One deployment can answer for many businesses: `VOICEBRIDGE_BUSINESSES` names business files
(or directories of them), each mapping its Twilio numbers (the webhook's `To`) to a job, that
job's settings, and its own webhook, transfer number, voice and extra instructions. Without
it there is one business, `default`, built from the environment, answering every number.
"""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import attrs

from voicebridge.config import VOICES, Config, ConfigError, _http_url, _phone, _rate_bp
from voicebridge.engine.job import Job
from voicebridge.ops.logs import mask_number
from voicebridge.jobs.pizza.job import SCHEMA as PIZZA_SCHEMA
from voicebridge.jobs.pizza.job import PizzaJob

# Every job's own migrations, by job name: a database holds the tables of all of them.
SCHEMAS: dict[str, tuple[tuple[str, ...], ...]] = {"pizza": PIZZA_SCHEMA}
DEFAULT_SLUG = "default"
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class BusinessError(ConfigError):
    """A business file is missing, malformed or clashes with another; the message names the file."""


def build_job(config: Config) -> Job:
    """The job `config` names, loaded and validated (a bad menu raises MenuError with file and line)."""
    from voicebridge.jobs.pizza.menu import load_menu

    return PizzaJob(menu=load_menu(config.menu_path), tax_rate_bp=config.tax_rate_bp)


def _pizza_from_settings(settings: dict[str, Any], source: Path, config: Config) -> Job:
    """A pizza job from a business file: its menu inline (the menu's own tables), in a `menu = "file"`
    next to it, or else the menu `config` names."""
    from voicebridge.jobs.pizza.menu import load_menu, menu_from_data

    menu_file = settings.pop("menu", None)
    if menu_file is not None and settings:
        raise BusinessError(f"{source}: either `menu = \"file\"` or the menu's tables inline, not both")
    if menu_file is not None:
        if not isinstance(menu_file, str) or not menu_file.strip():
            raise BusinessError(f"{source}: menu: expected a file name")
        menu = load_menu((source.parent / menu_file).expanduser())
    elif settings:
        menu = menu_from_data(settings, str(source))
    else:
        menu = load_menu(config.menu_path)
    return PizzaJob(menu=menu, tax_rate_bp=config.tax_rate_bp)


# How a business file's job settings become a job, by job name (each job adds its builder here).
JOB_BUILDERS: dict[str, Callable[[dict[str, Any], Path, Config], Job]] = {"pizza": _pizza_from_settings}


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
    def load(cls, config: Config) -> Businesses:
        """The businesses of `config.businesses` (files or directories), or the default business."""
        if not config.businesses:
            return cls.single(config, build_job(config))
        found: list[Business] = []
        by_number: dict[str, Business] = {}
        by_slug: dict[str, Business] = {}
        for path in _business_files(config.businesses):
            business = load_business(path, config)
            if business.slug in by_slug:
                raise BusinessError(f"{path}: slug {business.slug!r} is also {by_slug[business.slug].source}'s")
            by_slug[business.slug] = business
            for number in business.numbers:
                other = by_number.get(number)
                if other is not None:
                    raise BusinessError(f"{path}: number {mask_number(number)} is also {other.source}'s")
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
                raise BusinessError(f"VOICEBRIDGE_BUSINESSES: no *.toml business file in {path}")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise BusinessError(f"VOICEBRIDGE_BUSINESSES: no such file or directory: {path}")
    return files


def load_business(path: Path, config: Config) -> Business:
    """One business file; BusinessError if bad. The deployment's keys (`slug`, `numbers`, `job`,
    `webhook_url`, `webhook_secret`, `transfer_number`, `voice`, `tax_rate`, `instructions`) are
    taken out; every other key is the job's own settings (JOB_BUILDERS)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BusinessError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BusinessError(f"{path}: not a valid TOML file: {exc}") from None
    slug = data.pop("slug", path.stem.lower())
    if not isinstance(slug, str) or not SLUG.fullmatch(slug):
        raise BusinessError(f"{path}: slug: expected 1-40 lowercase letters, digits or '-', got {slug!r}")
    numbers = data.pop("numbers", None)
    if not isinstance(numbers, list) or not numbers:
        raise BusinessError(f"{path}: numbers: expected a list of the Twilio numbers this business answers")
    checked = tuple(_field(path, "numbers", _phone, n) for n in numbers)
    if len(set(checked)) != len(checked):
        raise BusinessError(f"{path}: numbers: a number is listed twice")
    job_name = data.pop("job", "pizza")
    if job_name not in JOB_BUILDERS:
        raise BusinessError(f"{path}: job: expected one of {', '.join(JOB_BUILDERS)}, got {job_name!r}")
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
        raise BusinessError(f"{path}: instructions: expected text")
    own = attrs.evolve(config, **changes)
    if "order_webhook_url" in changes and "order_webhook_secret" not in changes:
        raise BusinessError(f"{path}: webhook_secret: needed with webhook_url (deliveries are signed)")
    if own.order_webhook_url and not own.order_webhook_secret:
        raise BusinessError(f"{path}: webhook_secret: not set, but a webhook URL is")
    try:
        job = JOB_BUILDERS[job_name](data, path, own)
    except BusinessError:
        raise
    except Exception as exc:  # a job's own settings error (MenuError names file and line)
        raise BusinessError(str(exc)) from None
    if extra:
        job = cast(Job, _ExtraInstructions(job, extra.strip()))
    return Business(slug, checked, job, own, str(path))


def _field(path: Path, key: str, parse: Callable[[str], Any], value: Any) -> Any:
    if isinstance(value, (int, float)) and key == "tax_rate":
        value = str(value)
    if not isinstance(value, str):
        raise BusinessError(f"{path}: {key}: expected text, got {type(value).__name__}")
    try:
        return parse(value.strip())
    except ValueError as exc:
        raise BusinessError(f"{path}: {key}: {exc}") from None


def _nonempty_text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _voice(raw: str) -> str:
    if raw not in VOICES:
        raise ValueError(f"expected one of {', '.join(VOICES)}")
    return raw
