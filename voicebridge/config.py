"""Configuration: read once from the environment (and an optional `.env`), validated, frozen.

Every setting has one environment variable. Units are in the attribute names (`_s`, `_ms`,
`_bp` = basis points, `_usd`). A bad value raises `ConfigError` whose message names the
variable, so the daemon stops with one clear line.

Why one module of this length: every setting is here, each with its parser and its check, so
one place says what the daemon can be told and how a bad value is refused.
"""

from __future__ import annotations

import os
import urllib.parse
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Mapping, TypeVar

import attrs

T = TypeVar("T")

DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
JOBS = ("pizza", "appointments")  # VOICEBRIDGE_JOB
RECORDING_KINDS = ("twilio", "local")  # VOICEBRIDGE_AUDIO_RECORDING
DEFAULT_RECORDING_CONSENT = "This call is recorded."


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@attrs.frozen
class Prices:
    """USD per 1M tokens for the Realtime model and input transcription, and per minute for Twilio.

    Transcription defaults are gpt-4o-mini-transcribe's (the default transcription model) for token
    usage, and whisper-1's per minute for models that report a duration instead.
    """

    text_in_usd: Decimal = Decimal("4.00")
    text_cached_usd: Decimal = Decimal("0.40")
    text_out_usd: Decimal = Decimal("16.00")
    audio_in_usd: Decimal = Decimal("32.00")
    audio_cached_usd: Decimal = Decimal("0.40")
    audio_out_usd: Decimal = Decimal("64.00")
    twilio_per_min_usd: Decimal = Decimal("0.0125")
    transcription_in_usd: Decimal = Decimal("1.25")
    transcription_out_usd: Decimal = Decimal("5.00")
    transcription_per_min_usd: Decimal = Decimal("0.006")


def environment(environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = None) -> dict[str, str]:
    """`environ` (default `os.environ`) over a `.env` file's values: `env_file`, else `$VOICEBRIDGE_ENV_FILE`,
    else `./.env` when it exists (the settings; also the variables a business file's `[calendar]` names)."""
    env = dict(os.environ if environ is None else environ)
    path = env_file if env_file is not None else env.get("VOICEBRIDGE_ENV_FILE")
    path = ".env" if path is None and Path(".env").is_file() else path
    return {**_read_env_file(Path(path)), **env} if path is not None else env


@attrs.frozen(kw_only=True)
class Config:
    # OpenAI Realtime
    openai_api_key: str | None = None
    realtime_url: str = DEFAULT_REALTIME_URL
    realtime_model: str = "gpt-realtime"
    voice: str = "marin"
    audio_format: str = "pcmu"  # "pcmu" passthrough, or "pcm16" (PCM16 24 kHz toward the model)
    # Twilio
    twilio_auth_token: str | None = None
    twilio_account_sid: str | None = None
    twilio_api_base_url: str = DEFAULT_TWILIO_API_BASE_URL
    twilio_from_number: str | None = None
    public_url: str | None = None
    transfer_number: str | None = None
    dial_timeout_s: int = 20  # how long <Dial> rings the shop before the caller is offered voicemail
    allow_unsigned: bool = False
    # daemon
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: Path | str = Path("voicebridge.sqlite3")  # an SQLite file, or a postgresql:// URL
    record_dir: Path | None = None  # JSONL wire recordings for `voicebridge replay` (not audio)
    # recordings of the calls' audio: "twilio" (Twilio's dual-channel recording, downloaded), "local" (the
    # bridge's own stereo WAV); empty: none. Files go to <audio_recording_dir>/<business>/<CallSid>.<kind>.wav
    # (default: a `recordings` folder beside the SQLite database, or in the working directory for PostgreSQL).
    audio_recording: frozenset[str] = frozenset()
    audio_recording_dir: Path = attrs.field(
        default=attrs.Factory(lambda self: _default_recordings(self.db_path), takes_self=True))
    audio_recording_keep_days: int = 30  # files older are deleted by the daemon; 0 keeps them forever
    audio_recording_consent: str = DEFAULT_RECORDING_CONSENT
    log_level: str = "INFO"
    log_format: str = "auto"  # "json", "text", or "auto": text on a terminal, json otherwise
    # Debugging fallback only: media streams served by Hypercorn/Quart, Realtime client trio-websocket.
    framework_sockets: bool = False
    ws_max_message_bytes: int = 64 * 1024  # largest WebSocket message a Media Streams peer may send
    # the job: which one (None: as the business file says, else pizza), and its business file
    job: str | None = None
    business_path: Path | None = None  # VOICEBRIDGE_BUSINESS (for pizza, its menu)
    workers: int = 1  # worker processes behind one port (SO_REUSEPORT) under a supervisor when > 1
    stream_secret: str | None = None  # signs stream tokens; default: derived from twilio_auth_token
    businesses: tuple[Path, ...] = ()  # business files (or directories of them): one per set of numbers
    # ordering
    menu_path: Path | None = None  # VOICEBRIDGE_MENU: the pizza job's business file (an alias)
    tax_rate_bp: int = 800  # 8.00 %
    languages: tuple[str, ...] | None = None  # VOICEBRIDGE_LANGUAGES: a business file's `languages` wins; else en
    order_webhook_url: str | None = None
    order_webhook_secret: str | None = None
    webhook_max_attempts: int = 8
    webhook_timeout_s: float = 10.0
    # the business's calendar: CalDAV (bookings written through the outbox), or the feed
    caldav_url: str | None = None
    caldav_username: str | None = None
    caldav_password: str | None = None
    calendar_feed_token: str | None = None
    # timing
    silence_timeout_s: float = 12.0
    max_call_s: float = 900.0
    realtime_connect_timeout_s: float = 10.0
    response_stall_timeout_s: float = 8.0
    reconnect_budget_s: float = 15.0
    session_rotate_s: float = 55 * 60.0
    drain_timeout_s: float = 30.0
    prewarm_ttl_s: float = 20.0
    stream_token_ttl_s: float = 120.0
    prices: Prices = Prices()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = None
    ) -> "Config":
        """Build from `environment(environ, env_file=env_file)`: the environment wins over the file."""
        return cls._from_mapping(environment(environ, env_file=env_file))

    @classmethod
    def _from_mapping(cls, env: Mapping[str, str]) -> "Config":
        g = _Getter(env)
        d = Prices()
        prices = Prices(
            text_in_usd=g.get("VOICEBRIDGE_PRICE_TEXT_IN_USD", _decimal, d.text_in_usd),
            text_cached_usd=g.get("VOICEBRIDGE_PRICE_TEXT_CACHED_USD", _decimal, d.text_cached_usd),
            text_out_usd=g.get("VOICEBRIDGE_PRICE_TEXT_OUT_USD", _decimal, d.text_out_usd),
            audio_in_usd=g.get("VOICEBRIDGE_PRICE_AUDIO_IN_USD", _decimal, d.audio_in_usd),
            audio_cached_usd=g.get("VOICEBRIDGE_PRICE_AUDIO_CACHED_USD", _decimal, d.audio_cached_usd),
            audio_out_usd=g.get("VOICEBRIDGE_PRICE_AUDIO_OUT_USD", _decimal, d.audio_out_usd),
            twilio_per_min_usd=g.get("VOICEBRIDGE_PRICE_TWILIO_PER_MIN_USD", _decimal, d.twilio_per_min_usd),
            transcription_in_usd=g.get("VOICEBRIDGE_PRICE_TRANSCRIPTION_IN_USD", _decimal, d.transcription_in_usd),
            transcription_out_usd=g.get("VOICEBRIDGE_PRICE_TRANSCRIPTION_OUT_USD", _decimal, d.transcription_out_usd),
            transcription_per_min_usd=g.get("VOICEBRIDGE_PRICE_TRANSCRIPTION_PER_MIN_USD", _decimal,
                                            d.transcription_per_min_usd),
        )
        db_path = g.get("VOICEBRIDGE_DB", _db, _DEFAULT_DB)
        return cls(
            openai_api_key=g.get("OPENAI_API_KEY", _nonempty, None),
            realtime_url=g.get("OPENAI_REALTIME_URL", _ws_url, DEFAULT_REALTIME_URL),
            realtime_model=g.get("OPENAI_REALTIME_MODEL", _nonempty, "gpt-realtime"),
            voice=g.get("OPENAI_VOICE", _choice(VOICES), "marin"),
            audio_format=g.get("VOICEBRIDGE_AUDIO_FORMAT", _choice(("pcmu", "pcm16")), "pcmu"),
            twilio_auth_token=g.get("TWILIO_AUTH_TOKEN", _nonempty, None),
            twilio_account_sid=g.get("TWILIO_ACCOUNT_SID", _account_sid, None),
            twilio_api_base_url=g.get("TWILIO_API_BASE_URL", _http_url, DEFAULT_TWILIO_API_BASE_URL),
            twilio_from_number=g.get("TWILIO_FROM_NUMBER", _phone, None),
            public_url=g.get("PUBLIC_URL", _origin, None),
            transfer_number=g.get("TRANSFER_NUMBER", _phone, None),
            dial_timeout_s=g.get("VOICEBRIDGE_DIAL_TIMEOUT_S", _int_range(5, 600), 20),
            allow_unsigned=g.get("VOICEBRIDGE_ALLOW_UNSIGNED", _bool, False),
            host=g.get("VOICEBRIDGE_HOST", _nonempty, "127.0.0.1"),
            port=g.get("VOICEBRIDGE_PORT", _port, 8080),
            db_path=db_path,
            record_dir=g.get("VOICEBRIDGE_RECORD_DIR", _path, None),
            audio_recording=g.get("VOICEBRIDGE_AUDIO_RECORDING", _recording_kinds, frozenset()),
            audio_recording_dir=g.get("VOICEBRIDGE_AUDIO_RECORDING_DIR", _path, default_recording_dir(db_path, env)),
            audio_recording_keep_days=g.get("VOICEBRIDGE_AUDIO_RECORDING_KEEP_DAYS", _int_range(0, 36500), 30),
            audio_recording_consent=g.get("VOICEBRIDGE_AUDIO_RECORDING_CONSENT", _consent, DEFAULT_RECORDING_CONSENT),
            log_level=g.get("VOICEBRIDGE_LOG_LEVEL", _choice(("DEBUG", "INFO", "WARNING", "ERROR"), upper=True), "INFO"),
            log_format=g.get("VOICEBRIDGE_LOG_FORMAT", _choice(("json", "text", "auto")), "auto"),
            framework_sockets=g.get("VOICEBRIDGE_FRAMEWORK_SOCKETS", _bool, False),
            ws_max_message_bytes=g.get("VOICEBRIDGE_WS_MAX_MESSAGE_BYTES", _int_range(1024, 16 * 1024 * 1024), 64 * 1024),
            job=g.get("VOICEBRIDGE_JOB", _choice(JOBS), None),
            business_path=g.get("VOICEBRIDGE_BUSINESS", _path, None),
            workers=g.get("VOICEBRIDGE_WORKERS", _int_range(1, 64), 1),
            stream_secret=g.get("VOICEBRIDGE_STREAM_SECRET", _secret16, None),
            businesses=g.get("VOICEBRIDGE_BUSINESSES", _paths, ()),
            menu_path=g.get("VOICEBRIDGE_MENU", _path, None),
            tax_rate_bp=g.get("VOICEBRIDGE_TAX_RATE", _rate_bp, 800),
            languages=g.get("VOICEBRIDGE_LANGUAGES", _languages_setting, None),
            order_webhook_url=g.get("ORDER_WEBHOOK_URL", _http_url, None),
            order_webhook_secret=g.get("ORDER_WEBHOOK_SECRET", _nonempty, None),
            webhook_max_attempts=g.get("VOICEBRIDGE_WEBHOOK_MAX_ATTEMPTS", _int_range(1, 100), 8),
            webhook_timeout_s=g.get("VOICEBRIDGE_WEBHOOK_TIMEOUT_S", _seconds, 10.0),
            caldav_url=g.get("VOICEBRIDGE_CALDAV_URL", _caldav_url, None),
            caldav_username=g.get("VOICEBRIDGE_CALDAV_USERNAME", _nonempty, None),
            caldav_password=g.get("VOICEBRIDGE_CALDAV_PASSWORD", _nonempty, None),
            calendar_feed_token=g.get("VOICEBRIDGE_CALENDAR_FEED_TOKEN", _feed_token, None),
            silence_timeout_s=g.get("VOICEBRIDGE_SILENCE_TIMEOUT_S", _seconds, 12.0),
            max_call_s=g.get("VOICEBRIDGE_MAX_CALL_S", _seconds, 900.0),
            realtime_connect_timeout_s=g.get("VOICEBRIDGE_REALTIME_CONNECT_TIMEOUT_S", _seconds, 10.0),
            response_stall_timeout_s=g.get("VOICEBRIDGE_RESPONSE_STALL_TIMEOUT_S", _seconds, 8.0),
            reconnect_budget_s=g.get("VOICEBRIDGE_RECONNECT_BUDGET_S", _seconds, 15.0),
            session_rotate_s=g.get("VOICEBRIDGE_SESSION_ROTATE_S", _seconds, 55 * 60.0),
            drain_timeout_s=g.get("VOICEBRIDGE_DRAIN_TIMEOUT_S", _seconds, 30.0),
            prewarm_ttl_s=g.get("VOICEBRIDGE_PREWARM_TTL_S", _seconds, 20.0),
            stream_token_ttl_s=g.get("VOICEBRIDGE_STREAM_TOKEN_TTL_S", _seconds, 120.0),
            prices=prices,
        )

    # -- what each command needs -------------------------------------------------------

    def check_serve(self) -> None:
        """Raise ConfigError for what `serve` cannot run without."""
        if not self.openai_api_key:
            raise ConfigError("OPENAI_API_KEY: not set (the key the bridge uses for the Realtime API)")
        if not self.public_url:
            raise ConfigError("PUBLIC_URL: not set (the https origin Twilio reaches this daemon at)")
        if not self.public_url.startswith("https://"):
            raise ConfigError(
                f"PUBLIC_URL: {self.public_url} is not https; Twilio connects media streams only over wss:// and "
                "signed webhooks must not cross the internet in clear text (terminate TLS in front of the daemon "
                "and set PUBLIC_URL=https://...)")
        if not self.twilio_auth_token and not self.allow_unsigned:
            raise ConfigError(
                "TWILIO_AUTH_TOKEN: not set; Twilio signatures cannot be checked "
                "(set VOICEBRIDGE_ALLOW_UNSIGNED=1 only for local development)"
            )
        if self.order_webhook_url and not self.order_webhook_secret:
            raise ConfigError("ORDER_WEBHOOK_SECRET: not set, but ORDER_WEBHOOK_URL is (deliveries are signed)")
        if bool(self.caldav_username) != bool(self.caldav_password):
            missing = "VOICEBRIDGE_CALDAV_PASSWORD" if self.caldav_username else "VOICEBRIDGE_CALDAV_USERNAME"
            raise ConfigError(f"{missing}: not set, but the other half of the calendar login is")
        if self.caldav_username and not self.caldav_url:
            raise ConfigError("VOICEBRIDGE_CALDAV_URL: not set, but the calendar login is")
        if "twilio" in self.audio_recording and not (self.twilio_account_sid and self.twilio_auth_token):
            raise ConfigError("VOICEBRIDGE_AUDIO_RECORDING: twilio recordings need TWILIO_ACCOUNT_SID and "
                              "TWILIO_AUTH_TOKEN (the REST API starts and downloads them)")
        if self.business_path and self.menu_path and self.business_path != self.menu_path:
            raise ConfigError("VOICEBRIDGE_MENU: set as well as VOICEBRIDGE_BUSINESS, to another file (use one)")

    @property
    def business_file(self) -> Path | None:
        """The business file: VOICEBRIDGE_BUSINESS, else VOICEBRIDGE_MENU (pizza's), else None (packaged)."""
        return self.business_path or self.menu_path

    def check_outbound(self) -> None:
        """Raise ConfigError for what `call` (placing an outbound call) cannot run without."""
        for name, value in (
            ("TWILIO_ACCOUNT_SID", self.twilio_account_sid),
            ("TWILIO_AUTH_TOKEN", self.twilio_auth_token),
            ("TWILIO_FROM_NUMBER", self.twilio_from_number),
            ("PUBLIC_URL", self.public_url),
        ):
            if not value:
                raise ConfigError(f"{name}: not set (needed to place a call)")

    @property
    def stream_url(self) -> str:
        """The `wss://` URL of /media-stream as Twilio sees it (and signs it)."""
        assert self.public_url is not None
        scheme = "wss" if self.public_url.startswith("https://") else "ws"
        return scheme + self.public_url[self.public_url.index(":") :] + "/media-stream"

    def public(self, route: str) -> str:
        """An absolute public https URL of one of our routes, as Twilio sees it."""
        assert self.public_url is not None
        return self.public_url + route

    def redacted(self) -> dict[str, object]:
        """The settings for a log line: secrets shown only as set/unset."""
        out: dict[str, object] = {}
        for f in attrs.fields(Config):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = "<set>" if value else None
            elif f.name == "db_path" and isinstance(value, str):
                value = db_url_redacted(value)
            elif isinstance(value, (Path, Decimal)):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            elif isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, Prices):
                continue
            out[f.name] = value
        return out


SECRET_FIELDS = frozenset({"openai_api_key", "twilio_auth_token", "order_webhook_secret", "caldav_password",
                           "calendar_feed_token", "stream_secret"})


# -- parsing helpers --------------------------------------------------------------------


class _Getter:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            # Never echo a secret's value back.
            shown = "" if name in _SECRET_VARS else f", got {raw.strip()!r}"
            raise ConfigError(f"{name}: {exc}{shown}") from None


_SECRET_VARS = frozenset({"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "ORDER_WEBHOOK_SECRET", "VOICEBRIDGE_CALDAV_PASSWORD",
                         "VOICEBRIDGE_CALENDAR_FEED_TOKEN", "VOICEBRIDGE_CALDAV_URL",  # a bad URL may hold a password
                         "VOICEBRIDGE_STREAM_SECRET"})


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    if not path.is_file():
        raise ConfigError(f"VOICEBRIDGE_ENV_FILE: no such file: {path}")
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _nonempty(raw: str) -> str:
    return raw


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _port(raw: str) -> int:
    return _int_range(0, 65535)(raw)


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}")
        return value

    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 < value < 10**7:
        raise ValueError("expected a positive number of seconds")
    return value


def _decimal(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError("expected a decimal number such as 4.00") from None
    if not value.is_finite() or value < 0:
        raise ValueError("expected a non-negative decimal number")
    return value


def _rate_bp(raw: str) -> int:
    """A tax rate as a fraction ("0.08") or a percentage ("8%"), kept in basis points."""
    text = raw.rstrip("%")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError("expected a rate such as 0.08 or 8%") from None
    if raw.endswith("%"):
        value = value / 100
    if not value.is_finite() or not 0 <= value < 1:
        raise ValueError("expected a rate from 0 to below 1 (or 0% to below 100%)")
    bp = value * 10000
    if bp != bp.to_integral_value():
        raise ValueError("expected a rate in whole basis points (at most two decimals of a percent)")
    return int(bp)


def _languages_setting(raw: str) -> tuple[str, ...]:
    from voicebridge.i18n import languages_setting

    return languages_setting(raw)


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _url(raw: str, schemes: tuple[str, ...]) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL")
    try:
        _ = parts.port  # raises for a port that is not a number
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    return parts


def _ws_url(raw: str) -> str:
    _url(raw, ("wss", "ws"))
    return raw


def _http_url(raw: str) -> str:
    _url(raw, ("https", "http"))
    return raw.rstrip("/") if urllib.parse.urlsplit(raw).path in ("", "/") else raw


def _caldav_url(raw: str) -> str:
    parts = _url(raw, ("http", "https"))
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password (use VOICEBRIDGE_CALDAV_USERNAME and _PASSWORD)")
    return raw


def _feed_token(raw: str) -> str:
    if len(raw) < 20 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in raw):
        raise ValueError("must be at least 20 letters, digits, - or _ (e.g. `python -c 'import secrets; "
                         "print(secrets.token_urlsafe(24))'`)")
    return raw


def _origin(raw: str) -> str:
    parts = _url(raw, ("https", "http"))
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("expected an origin only, like https://voice.example.com (no path or query)")
    return f"{parts.scheme}://{parts.netloc}"


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


_DEFAULT_DB: Path | str = Path("voicebridge.sqlite3")


def db_url_redacted(url: str) -> str:
    """A database URL without its password (nor a query, which may carry one)."""
    parts = urllib.parse.urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


def _db(raw: str) -> Path | str:
    """An SQLite file (a path, or sqlite:///path), or a PostgreSQL URL kept as it is."""
    if raw.startswith(("postgresql://", "postgres://")):
        return raw
    if raw.startswith("sqlite:///"):
        raw = raw[len("sqlite://"):]
    elif "://" in raw:
        raise ValueError("expected a file path, sqlite:///path or postgresql://user@host/dbname")
    return _path(raw)


def _default_recordings(db: Path | str) -> Path:
    """Call recordings live beside the SQLite database (for PostgreSQL: in the working directory)."""
    return db.parent / "recordings" if isinstance(db, Path) else Path("recordings")


def default_recording_dir(db: Path | str, env: Mapping[str, str]) -> Path:
    """Where audio recordings go by default: a `recordings` folder beside the SQLite database; with
    PostgreSQL, under the service's state directory (systemd's $STATE_DIRECTORY), else the working one."""
    state = (env.get("STATE_DIRECTORY") or "").split(":")[0]
    if isinstance(db, str) and state:
        return Path(state) / "recordings"
    return _default_recordings(db)



def _recording_kinds(raw: str) -> frozenset[str]:
    kinds = frozenset(k.strip().lower() for k in raw.split(",") if k.strip())
    unknown = sorted(kinds - set(RECORDING_KINDS))
    if unknown:
        raise ValueError(f"unknown kind {', '.join(unknown)}; expected a comma list of {', '.join(RECORDING_KINDS)}")
    return kinds


def _consent(raw: str) -> str:
    if len(raw) > 500 or any(ord(c) < 32 for c in raw):
        raise ValueError("expected one spoken sentence on one line (at most 500 characters)")
    return raw


def _secret16(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("expected at least 16 characters (e.g. `openssl rand -hex 32`)")
    return raw


def _paths(raw: str) -> tuple[Path, ...]:
    """Files or directories, separated by the OS path separator (`:`) or commas."""
    parts = [p.strip() for p in raw.replace(",", os.pathsep).split(os.pathsep) if p.strip()]
    if not parts:
        raise ValueError("expected a directory or a list of business files")
    return tuple(Path(p).expanduser() for p in parts)


def _phone(raw: str) -> str:
    digits = raw[1:] if raw.startswith("+") else ""
    if not (digits.isdigit() and 8 <= len(digits) <= 15):
        raise ValueError("expected an E.164 number such as +15551234567")
    return raw


def _account_sid(raw: str) -> str:
    if not (raw.startswith("AC") and len(raw) == 34):
        raise ValueError("expected an account SID: AC followed by 32 characters")
    return raw
