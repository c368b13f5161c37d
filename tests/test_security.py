"""Twilio signature checks and single-use stream tokens (voicebridge.edges.security)."""

from __future__ import annotations

import re

import pytest
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from voicebridge.edges.security import (
    MemoryUsedStore,
    StreamTokenError,
    StreamTokens,
    TwilioSignatures,
)

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voice.example.com"
FORM = {"CallSid": "CA" + "1" * 32, "From": "+15551230000", "To": "+15559870000", "Direction": "inbound"}
CALL_A = "CA" + "a" * 32
CALL_B = "CA" + "b" * 32


def sign(url: str, params: object = None, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


def checker(token: str | None = TOKEN, *, allow_unsigned: bool = False) -> TwilioSignatures:
    return TwilioSignatures(token, PUBLIC, allow_unsigned=allow_unsigned)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- HTTP webhook signatures ------------------------------------------------------------


def test_webhook_signed_over_public_url_is_accepted() -> None:
    """A form POST signed by Twilio over the public https URL passes."""
    assert checker().check_http("/incoming-call", FORM, sign(PUBLIC + "/incoming-call", FORM))


def test_webhook_signature_includes_query_string() -> None:
    """The query string is part of the signed URL: signed with it passes, without it fails."""
    signature = sign(PUBLIC + "/incoming-call?shop=1", FORM)
    assert checker().check_http("/incoming-call?shop=1", FORM, signature)
    assert not checker().check_http("/incoming-call", FORM, signature)


def test_webhook_full_path_with_an_empty_query_is_accepted() -> None:
    """Quart's `full_path` ends in a bare `?` when there is no query; it is ignored."""
    signature = sign(PUBLIC + "/incoming-call", FORM)
    assert checker().check_http("/incoming-call?", FORM, signature)
    assert checker().check_websocket("/media-stream?", sign("wss://voice.example.com/media-stream"))


def test_webhook_signed_over_the_proxied_host_is_refused() -> None:
    """A signature over the URL seen behind the proxy (not the public one) fails."""
    signature = sign("http://127.0.0.1:8080/incoming-call", FORM)
    assert not checker().check_http("/incoming-call", FORM, signature)


def test_webhook_with_a_changed_field_is_refused() -> None:
    """Changing one form value after signing breaks the signature."""
    signature = sign(PUBLIC + "/incoming-call", FORM)
    assert not checker().check_http("/incoming-call", {**FORM, "From": "+15550000000"}, signature)
    assert not checker().check_http("/incoming-call", {**FORM, "Extra": "1"}, signature)


def test_webhook_without_or_with_a_foreign_signature_is_refused() -> None:
    """No signature, an empty one, or one made with another token: refused."""
    url = PUBLIC + "/incoming-call"
    assert not checker().check_http("/incoming-call", FORM, None)
    assert not checker().check_http("/incoming-call", FORM, "")
    assert not checker().check_http("/incoming-call", FORM, sign(url, FORM, token="another-token"))


def test_webhook_signed_with_the_default_port_is_accepted() -> None:
    """Twilio may sign `https://host:443/...`; both port forms are accepted."""
    signature = sign("https://voice.example.com:443/incoming-call", FORM)
    assert checker().check_http("/incoming-call", FORM, signature)


def test_webhook_multidict_form_signs_every_value() -> None:
    """A multi-dict with a repeated field validates over all of its values."""
    form = MultiDict([("CallSid", CALL_A), ("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered")])
    signature = sign(PUBLIC + "/call-status", form)
    assert checker().check_http("/call-status", form, signature)
    one_value = MultiDict([("CallSid", CALL_A), ("StatusCallbackEvent", "ringing")])
    assert not checker().check_http("/call-status", one_value, signature)


# -- WebSocket upgrade signatures --------------------------------------------------------


@pytest.mark.parametrize(
    "signed_url",
    [
        "wss://voice.example.com/media-stream",
        "https://voice.example.com/media-stream",
        "wss://voice.example.com/media-stream/",
        "https://voice.example.com/media-stream/",
    ],
)
def test_websocket_signature_forms_are_accepted(signed_url: str) -> None:
    """The wss URL from the TwiML (and its https / trailing-slash forms) passes."""
    assert checker().check_websocket("/media-stream", sign(signed_url))


def test_websocket_signature_for_another_host_or_path_is_refused() -> None:
    """A signature over another host, another path, or with params fails."""
    ws = checker()
    assert not ws.check_websocket("/media-stream", sign("wss://evil.example.com/media-stream"))
    assert not ws.check_websocket("/media-stream", sign("wss://voice.example.com/other"))
    assert not ws.check_websocket("/media-stream", sign("wss://voice.example.com/media-stream", {"a": "b"}))
    assert not ws.check_websocket("/media-stream", None)


def test_plain_http_public_url_maps_to_ws() -> None:
    """For an http:// origin (local tunnels) Twilio's ws:// URL is what is checked."""
    sigs = TwilioSignatures(TOKEN, "http://localhost:8080", allow_unsigned=False)
    assert sigs.check_websocket("/media-stream", sign("ws://localhost:8080/media-stream"))


def test_public_url_with_a_path_is_a_clear_error() -> None:
    """A public URL that is not a bare origin is refused at construction."""
    with pytest.raises(ValueError, match="origin"):
        TwilioSignatures(TOKEN, "https://voice.example.com/app", allow_unsigned=False)


# -- unsigned mode ----------------------------------------------------------------------


def test_unsigned_mode_lets_everything_through_without_a_token() -> None:
    """allow_unsigned and no token: every check passes and `unsigned` says so."""
    sigs = checker(None, allow_unsigned=True)
    assert sigs.unsigned
    assert sigs.check_http("/incoming-call", FORM, None)
    assert sigs.check_websocket("/media-stream", "garbage")


def test_no_token_without_allow_unsigned_refuses_everything() -> None:
    """No token and no allow_unsigned: fail closed."""
    sigs = checker(None)
    assert not sigs.unsigned
    assert not sigs.check_http("/incoming-call", FORM, sign(PUBLIC + "/incoming-call", FORM))
    assert not sigs.check_websocket("/media-stream", sign("wss://voice.example.com/media-stream"))


def test_allow_unsigned_is_ignored_when_a_token_is_set() -> None:
    """With a token, allow_unsigned does not weaken the check."""
    sigs = checker(TOKEN, allow_unsigned=True)
    assert not sigs.unsigned
    assert not sigs.check_http("/incoming-call", FORM, None)


# -- stream tokens ----------------------------------------------------------------------


def test_token_is_url_safe_short_and_redeems_once() -> None:
    """A fresh token is URL-safe, under 200 chars, accepted once, then refused as reused."""
    tokens = StreamTokens(b"k" * 32, 120.0, clock=Clock())
    token = tokens.mint(CALL_A)
    assert len(token) < 200
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    tokens.redeem(token, CALL_A)
    with pytest.raises(StreamTokenError) as err:
        tokens.redeem(token, CALL_A)
    assert err.value.reason == "reused"


def test_two_tokens_for_one_call_are_independent() -> None:
    """Each mint has its own nonce: two tokens for the same call both redeem."""
    tokens = StreamTokens(b"k" * 32, 120.0, clock=Clock())
    first, second = tokens.mint(CALL_A), tokens.mint(CALL_A)
    assert first != second
    tokens.redeem(first, CALL_A)
    tokens.redeem(second, CALL_A)


def test_token_expires_after_ttl() -> None:
    """A token presented at or after its expiry is refused as expired."""
    clock = Clock()
    tokens = StreamTokens(b"k" * 32, 120.0, clock=clock)
    token = tokens.mint(CALL_A)
    clock.now += 120.0
    with pytest.raises(StreamTokenError) as err:
        tokens.redeem(token, CALL_A)
    assert err.value.reason == "expired"


def test_token_just_before_expiry_is_accepted() -> None:
    """A token presented within its TTL is accepted."""
    clock = Clock()
    tokens = StreamTokens(b"k" * 32, 120.0, clock=clock)
    token = tokens.mint(CALL_A)
    clock.now += 119.0
    tokens.redeem(token, CALL_A)


def test_token_for_another_call_is_refused_and_not_burned() -> None:
    """A token bound to call A is refused for call B and still works for A."""
    tokens = StreamTokens(b"k" * 32, 120.0, clock=Clock())
    token = tokens.mint(CALL_A)
    with pytest.raises(StreamTokenError) as err:
        tokens.redeem(token, CALL_B)
    assert err.value.reason == "wrong-call"
    tokens.redeem(token, CALL_A)


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(token: str | None) -> None:
    """No token in customParameters: refused as missing."""
    tokens = StreamTokens(b"k" * 32, 120.0, clock=Clock())
    with pytest.raises(StreamTokenError) as err:
        tokens.redeem(token, CALL_A)
    assert err.value.reason == "missing"


@pytest.mark.parametrize(
    "token",
    ["abc", "v1.CA1.123.nonce", "v2.CA1.1.AAAAAAAAAAAAAAAA." + "A" * 43, "v1.CA1.12x.AAAAAAAAAAAAAAAA." + "A" * 43,
     "v1.CA1.1.AAAA.AAAA", "v1.CA 1.1.AAAAAAAAAAAAAAAA." + "A" * 43, "v1.CA1.1.AAAAAAAAAAAAAAAA." + "A" * 43 + ".x"],
)
def test_malformed_token_is_refused(token: str) -> None:
    """Tokens that do not have the v1 shape are refused as malformed."""
    tokens = StreamTokens(b"k" * 32, 120.0, clock=Clock())
    with pytest.raises(StreamTokenError) as err:
        tokens.redeem(token, CALL_A)
    assert err.value.reason == "malformed"


def test_tampered_or_foreign_token_fails_the_signature() -> None:
    """A token with a pushed-out expiry, or from another secret, fails the HMAC."""
    clock = Clock()
    tokens = StreamTokens(b"k" * 32, 120.0, clock=clock)
    version, sid, expiry, nonce, sig = tokens.mint(CALL_A).split(".")
    stretched = ".".join([version, sid, str(int(expiry) + 3_600_000), nonce, sig])
    foreign = StreamTokens(b"x" * 32, 120.0, clock=clock).mint(CALL_A)
    for token in (stretched, foreign):
        with pytest.raises(StreamTokenError) as err:
            tokens.redeem(token, CALL_A)
        assert err.value.reason == "bad-signature"


def test_another_process_with_the_same_secret_verifies_the_token() -> None:
    """Verification needs only the secret: a second instance accepts the first one's token."""
    clock = Clock()
    worker_a = StreamTokens(b"s" * 32, 120.0, clock=clock)
    worker_b = StreamTokens(b"s" * 32, 120.0, clock=clock)
    worker_b.redeem(worker_a.mint(CALL_A), CALL_A)


class SharedStore:
    """A store shared by two instances, as a SQLite-backed one would be across workers."""

    def __init__(self) -> None:
        self.rows: dict[str, float] = {}

    def add_if_absent(self, nonce: str, expires_at: float) -> bool:
        if nonce in self.rows:
            return False
        self.rows[nonce] = expires_at
        return True


def test_shared_used_store_stops_reuse_across_workers() -> None:
    """With a shared used_store, a token redeemed by one worker is refused by another."""
    clock, store = Clock(), SharedStore()
    worker_a = StreamTokens(b"s" * 32, 120.0, clock=clock, used_store=store)
    worker_b = StreamTokens(b"s" * 32, 120.0, clock=clock, used_store=store)
    token = worker_a.mint(CALL_A)
    worker_a.redeem(token, CALL_A)
    with pytest.raises(StreamTokenError) as err:
        worker_b.redeem(token, CALL_A)
    assert err.value.reason == "reused"
    assert list(store.rows.values()) == [pytest.approx(clock.now + 120.0)]


def test_memory_store_forgets_expired_nonces() -> None:
    """Redeemed nonces are pruned once expired, so memory stays bounded by the TTL."""
    clock = Clock()
    store = MemoryUsedStore(clock=clock)
    tokens = StreamTokens(b"k" * 32, 10.0, clock=clock, used_store=store)
    for _ in range(50):
        tokens.redeem(tokens.mint(CALL_A), CALL_A)
    assert len(store) == 50
    clock.now += 10.0
    tokens.redeem(tokens.mint(CALL_A), CALL_A)
    assert len(store) == 1


def test_memory_store_never_grows_past_its_cap() -> None:
    """At capacity the store drops the nonce closest to expiry instead of growing."""
    clock = Clock()
    store = MemoryUsedStore(clock=clock, max_entries=3)
    for i in range(5):
        assert store.add_if_absent(f"n{i}", clock.now + 100 + i)
    assert len(store) == 3
    assert not store.add_if_absent("n4", clock.now + 104)
    assert store.add_if_absent("n0", clock.now + 100)


def test_bad_constructor_and_mint_arguments_are_clear_errors() -> None:
    """A short secret, a silly TTL, or a call sid with odd characters raise ValueError."""
    with pytest.raises(ValueError, match="16 bytes"):
        StreamTokens(b"short", 120.0)
    with pytest.raises(ValueError, match="ttl_s"):
        StreamTokens(b"k" * 32, 0.0)
    with pytest.raises(ValueError, match="call_sid"):
        StreamTokens(b"k" * 32, 120.0).mint("CA.1")


def test_default_secret_is_random_per_instance() -> None:
    """Without a secret, each instance draws its own: tokens do not cross instances."""
    token = StreamTokens().mint(CALL_A)
    with pytest.raises(StreamTokenError) as err:
        StreamTokens().redeem(token, CALL_A)
    assert err.value.reason == "bad-signature"
