"""Structured logging: one JSON object per line (or plain text), redacted.

`setup_logging()` installs one handler on the root logger. Every record passes a
redaction step before it is formatted: fields named like secrets are masked, audio
fields (`payload`, `audio`, `delta`) and byte strings are never printed, long strings are
cut to 500 characters, and any registered secret value is masked wherever it appears.
The call engine sets `call_sid_var` per call; trio tasks inherit it.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
import traceback
from typing import Any, Iterable, TextIO

call_sid_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_sid", default=None)

MAX_STRING = 500
MAX_EXCEPTION = 4000
MASK = "[redacted]"
AUDIO_FIELDS = frozenset({"payload", "audio", "delta"})
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SECRET_NAME = re.compile(
    r"(?:^|_)(?:token|key)$|secret|password|passwd|authorization|signature|cookie|credential", re.IGNORECASE
)
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_MAX_DEPTH = 6
_HANDLER_MARK = "_voicebridge_handler"


def mask_number(number: str | None) -> str:
    """A phone number for a log line: its last two digits only (full numbers never go to logs)."""
    text = (number or "").strip()
    return "+..." + text[-2:] if len(text) > 2 else "?"


def is_secret_name(name: str) -> bool:
    """True for field names whose values must not be logged (`*_token`, `*_key`, `*secret*`, ...)."""
    return bool(_SECRET_NAME.search(name.replace("-", "_")))


class Redactor:
    """Cleans values for a log line; `secrets` are exact values masked wherever they appear."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Short values would mask ordinary words; real secrets are long.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def text(self, value: str, limit: int = MAX_STRING) -> str:
        """Mask known secrets in `value`, then cut it to `limit` characters."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        if len(value) > limit:
            value = f"{value[:limit]}…[+{len(value) - limit} chars]"
        return value

    def fields(self, items: Iterable[tuple[str, Any]], depth: int = 0) -> dict[str, Any]:
        """A redacted copy of `items`: secrets masked, audio fields dropped."""
        out: dict[str, Any] = {}
        for key, value in items:
            key = str(key)
            if key.lower() in AUDIO_FIELDS:
                continue
            out[key] = MASK if is_secret_name(key) and value is not None else self.value(value, depth)
        return out

    def value(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready, redacted copy of one value."""
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return f"<{len(value)} bytes>"
        if depth >= _MAX_DEPTH:
            return "<nested too deep>"
        if isinstance(value, dict):
            return self.fields(value.items(), depth + 1)
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.value(v, depth + 1) for v in list(value)[:50]]
        return self.text(str(value))


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__()
        self._json = fmt == "json"
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        r = self._redactor
        try:
            msg = record.getMessage()
        except (TypeError, ValueError) as exc:  # bad %-args: keep the line, say so
            msg = f"{record.msg!s} [unformattable args: {exc}]"
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": r.text(msg),
        }
        call_sid = getattr(record, "call_sid", None) or call_sid_var.get()
        if call_sid:
            out["call_sid"] = r.text(str(call_sid), 64)
        extra = ((k, v) for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and k != "call_sid")
        for key, value in r.fields(extra).items():
            out.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            tb = "".join(traceback.format_exception(*record.exc_info))
            out["exc"] = r.text(tb[-MAX_EXCEPTION:], MAX_EXCEPTION)
        if self._json:
            return json.dumps(out, ensure_ascii=False, default=str)
        head = f"{out.pop('ts')} {out.pop('level'):<7} {out.pop('logger')}"
        trace = out.pop("exc", None)
        text = out.pop("msg")
        if "call_sid" in out:
            head += f" [{out.pop('call_sid')}]"
        tail = "".join(f" {k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in out.items())
        return f"{head} {text}{tail}" + (f"\n{trace}" if trace else "")


def setup_logging(
    level: str,
    fmt: str,
    stream: TextIO | None = None,
    *,
    secrets: Iterable[str | None] = (),
) -> logging.Handler:
    """Send all logging to `stream` (default stderr) as `fmt` ("json" or "text") at `level`.

    `secrets` are exact values (API key, auth token, ...) masked wherever they appear.
    Calling it again replaces the previous handler. Returns the installed handler.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(_Formatter(fmt, Redactor(secrets)))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(name)
    # twilio's HTTP client logs every request's headers at INFO: keep that for DEBUG only.
    logging.getLogger("twilio.http_client").setLevel(logging.DEBUG if name == "DEBUG" else logging.WARNING)
    return handler
