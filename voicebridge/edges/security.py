"""Who may talk to us: Twilio request signatures and single-use stream tokens.

`TwilioSignatures` checks `X-Twilio-Signature` on the voice webhook and on the
`/media-stream` WebSocket upgrade, always against the public URL Twilio used (never the
Host header seen behind a TLS proxy). `StreamTokens` mints a token bound to one CallSid
for the TwiML `<Parameter name="token">` and redeems it, once, from the `start`
message's `customParameters` before any Realtime minute is spent.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import logging
import re
import secrets
import time
import urllib.parse
from typing import Callable, Mapping, Protocol

from twilio.request_validator import RequestValidator

log = logging.getLogger(__name__)

UNSIGNED_WARNING = (
    "Twilio signatures are NOT checked (VOICEBRIDGE_ALLOW_UNSIGNED=1 and no TWILIO_AUTH_TOKEN): "
    "anyone who can reach this daemon can start calls on your OpenAI account; "
    "use this only for local development"
)


class TwilioSignatures:
    """Validate `X-Twilio-Signature` for our HTTP routes and the media-stream upgrade.

    Without an auth token, every check passes when `allow_unsigned` is true (log
    `UNSIGNED_WARNING` at startup) and fails otherwise. With a token, `allow_unsigned`
    changes nothing.
    """

    def __init__(self, auth_token: str | None, public_url: str, *, allow_unsigned: bool) -> None:
        parts = urllib.parse.urlsplit(public_url)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("public_url must be an origin such as https://voice.example.com")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._ws_origin = ("wss" if parts.scheme == "https" else "ws") + f"://{parts.netloc}"
        self._validator = RequestValidator(auth_token) if auth_token else None
        self._allow_unsigned = allow_unsigned

    @property
    def unsigned(self) -> bool:
        """True when no check is made at all (log `UNSIGNED_WARNING`)."""
        return self._validator is None and self._allow_unsigned

    def check_http(self, path: str, form: Mapping[str, str], signature: str | None) -> bool:
        """True if `signature` signs `public_url + path` (path with query string) and `form`.

        Pass Quart's `request.full_path` (a bare trailing `?` is ignored) and `await
        request.form`; with a multi-dict every value is signed.
        """
        if self._validator is None:
            return self._allow_unsigned
        if not signature or not path.startswith("/"):
            return False
        return bool(self._validator.validate(self._origin + path.removesuffix("?"), form, signature))

    def check_websocket(self, path: str, signature: str | None) -> bool:
        """True if `signature` signs the stream URL (`wss://HOST` + `path`) with no params.

        Twilio signs the `wss://` URL as written in the TwiML; the `https://` form and a
        trailing `/` are accepted too, as proxies and Twilio's docs suggest.
        """
        if self._validator is None:
            return self._allow_unsigned
        if not signature or not path.startswith("/"):
            return False
        path = path.removesuffix("?")
        paths = [path]
        base, sep, query = path.partition("?")
        if not base.endswith("/"):
            paths.append(base + "/" + sep + query)
        for origin in (self._ws_origin, self._origin):
            for candidate in paths:
                if self._validator.validate(origin + candidate, {}, signature):
                    return True
        return False


# -- single-use stream tokens ---------------------------------------------------------


STREAM_TOKEN_REASONS = frozenset({"missing", "malformed", "bad-signature", "expired", "wrong-call", "reused"})


class StreamTokenError(Exception):
    """A stream token was refused; `reason` is one of `STREAM_TOKEN_REASONS`."""

    def __init__(self, reason: str) -> None:
        assert reason in STREAM_TOKEN_REASONS, reason
        super().__init__(f"stream token refused: {reason}")
        self.reason = reason


class UsedNonceStore(Protocol):
    """Remembers redeemed token nonces until they expire (shared by all workers if need be)."""

    def add_if_absent(self, nonce: str, expires_at: float) -> bool:
        """Record `nonce`; False if it was already recorded (the token is being reused)."""
        ...


class MemoryUsedStore:
    """In-process `UsedNonceStore`: a dict pruned of expired nonces, at most `max_entries`.

    When full of unexpired nonces, the one closest to expiry is forgotten (and a warning
    logged) rather than refusing new calls.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def add_if_absent(self, nonce: str, expires_at: float) -> bool:
        """Record `nonce` until `expires_at`; False if already recorded."""
        self._prune(self._clock())
        if nonce in self._expiry:
            return False
        if len(self._expiry) >= self._max:
            _, oldest = heapq.heappop(self._heap)
            del self._expiry[oldest]
            log.warning("stream token store full (%d nonces); forgetting the oldest", self._max)
        self._expiry[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))
        return True

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, nonce = heapq.heappop(self._heap)
            del self._expiry[nonce]


_TOKEN_VERSION = "v1"
_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")


class StreamTokens:
    """Mint and redeem single-use tokens bound to a CallSid, valid for `ttl_s`.

    A token is `v1.<call_sid>.<expiry ms>.<nonce>.<HMAC-SHA256>` (URL-safe, about 110
    chars), so any process holding `secret` can verify it; single use is enforced by
    `used_store` (in-memory by default; plug in a shared one for several workers).
    """

    def __init__(
        self,
        secret: bytes | None = None,
        ttl_s: float = 120.0,
        *,
        clock: Callable[[], float] = time.time,
        used_store: UsedNonceStore | None = None,
    ) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        if len(secret) < 16:
            raise ValueError("stream token secret must be at least 16 bytes")
        if not 0 < ttl_s < 86400:
            raise ValueError("stream token ttl_s must be between 0 and 86400 seconds")
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._used: UsedNonceStore = used_store if used_store is not None else MemoryUsedStore(clock=clock)

    def mint(self, call_sid: str, *, bound: str = "") -> str:
        """A fresh token for `call_sid`, to pass as the TwiML `<Parameter name="token">`.

        `bound` is signed with it but not carried in it (the business the call is for, which
        travels in its own `<Parameter>`): a token only verifies with the same `bound`.
        """
        if not _CALL_SID.fullmatch(call_sid):
            raise ValueError("call_sid must be 1-64 letters, digits, '_' or '-'")
        expiry_ms = int((self._clock() + self._ttl_s) * 1000)
        nonce = secrets.token_urlsafe(12)
        body = f"{_TOKEN_VERSION}.{call_sid}.{expiry_ms}.{nonce}"
        return f"{body}.{self._sign(body, bound)}"

    def redeem(self, token: str | None, call_sid: str, *, bound: str = "") -> None:
        """Accept `token` for `call_sid` once; raise `StreamTokenError(reason)` otherwise."""
        nonce, expires_at = self.verify(token, call_sid, bound=bound)
        if not self._used.add_if_absent(nonce, expires_at):
            raise StreamTokenError("reused")

    def verify(self, token: str | None, call_sid: str, *, bound: str = "") -> tuple[str, float]:
        """Check `token` for `call_sid` without using it up: its (nonce, expiry) for a shared
        single-use record (`Store.redeem_token`); raise `StreamTokenError(reason)` otherwise."""
        if not token:
            raise StreamTokenError("missing")
        parts = token.split(".")
        if (
            len(parts) != 5
            or parts[0] != _TOKEN_VERSION
            or not _CALL_SID.fullmatch(parts[1])
            or not parts[2].isdigit()
            or len(parts[2]) > 16
            or not _NONCE.fullmatch(parts[3])
            or not _SIG.fullmatch(parts[4])
        ):
            raise StreamTokenError("malformed")
        body = token.rpartition(".")[0]
        if not hmac.compare_digest(self._sign(body, bound), parts[4]):
            raise StreamTokenError("bad-signature")
        if not hmac.compare_digest(parts[1].encode(), call_sid.encode("utf-8", "replace")):
            raise StreamTokenError("wrong-call")
        expires_at = int(parts[2]) / 1000
        if self._clock() >= expires_at:
            raise StreamTokenError("expired")
        return parts[3], expires_at

    def _sign(self, body: str, bound: str = "") -> str:
        message = body.encode("ascii") + (b"\n" + bound.encode("utf-8") if bound else b"")
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def stream_token_secret(explicit: str | None, twilio_auth_token: str | None) -> bytes | None:
    """The deployment's stream token key: `VOICEBRIDGE_STREAM_SECRET`, else derived from the Twilio
    auth token (so every worker and machine of one deployment agrees with no extra setting), else
    None (a random key for this process only: a single process in development)."""
    if explicit:
        return explicit.encode("utf-8")
    if twilio_auth_token:
        return hmac.new(twilio_auth_token.encode("utf-8"), b"voicebridge stream tokens v1", hashlib.sha256).digest()
    return None


def token_binding(business: str) -> str:
    """What a stream token is bound to besides its call: the business (nothing for the default one,
    so tokens of a single-business deployment are as before)."""
    return "" if business == "default" else f"business={business}"
