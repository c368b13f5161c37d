"""Staff logins: argon2 password hashes, signed session cookies, CSRF tokens, a login rate limit.

Sessions are signed cookies (itsdangerous, which Quart already depends on), not server-side
rows: nothing to clean up, and a restart keeps everyone logged in because the signing key lives
in the store. Each request still looks the account up, so a disabled or expired account is out
at once. The CSRF token is bound to the session (it is inside the signed cookie), and every
POST must send it back, as a form field or the X-CSRF-Token header.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from typing import Any, Callable

import attrs
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "vb_staff"
SESSION_MAX_AGE_S = 12 * 3600  # one shift
_hasher = PasswordHasher()
# A hash to verify against when the account does not exist, so both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a staff password has at least 8 characters")
    if len(password) > 1024:
        raise ValueError("a staff password has at most 1024 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password[:1024]) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@attrs.frozen
class Session:
    name: str
    csrf: str


class Sessions:
    """Make and read the signed session cookie's value."""

    def __init__(self, key: str, max_age_s: int = SESSION_MAX_AGE_S) -> None:
        self._s = URLSafeTimedSerializer(key, salt="voicebridge-staff-session")
        self.max_age_s = max_age_s

    def new(self, name: str) -> tuple[str, Session]:
        session = Session(name, secrets.token_urlsafe(32))
        return self._s.dumps({"n": name, "c": session.csrf}), session

    def read(self, value: str | None) -> Session | None:
        if not value or len(value) > 4096:
            return None
        try:
            data: Any = self._s.loads(value, max_age=self.max_age_s)
        except BadSignature:  # includes an expired signature
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str) or not isinstance(data.get("c"), str):
            return None
        return Session(data["n"], data["c"])


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


class LoginLimiter:
    """At most `attempts` failed logins per `window_s`, counted per account name and per client address.

    Memory is bounded: at most `max_keys` keys are remembered (the oldest are forgotten first).
    """

    def __init__(self, attempts: int = 5, window_s: float = 300.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until a login for (name, address) is allowed again; 0 when it is allowed now."""
        now = self.clock()
        wait = 0.0
        for key in (f"n:{name.lower()}", f"a:{address}"):
            times = self._recent(key, now)
            if len(times) >= self.attempts:
                wait = max(wait, self.window_s - (now - times[-self.attempts]))
        return wait

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        for key in (f"n:{name.lower()}", f"a:{address}"):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times[-self.attempts:]
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        self._failures.pop(f"n:{name.lower()}", None)
