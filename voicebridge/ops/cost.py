"""What a call costs: Realtime tokens (from `response.done` usage), the caller's speech
transcribed (from the transcription events' usage), plus Twilio minutes.

Exact `Decimal` arithmetic, rounded once to 6 decimal places (ROUND_HALF_UP). Cached
tokens are a part of the input counts and are priced at the cached rate. Image input
tokens are recorded but not priced (a phone call sends no images). Transcription is priced
per token, or per minute for models that report a duration.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Mapping

from voicebridge.config import Prices

MICRO = Decimal("0.000001")
PER_MILLION = Decimal(1_000_000)

TOKEN_KINDS = ("text_in", "text_cached", "audio_in", "audio_cached", "image_in", "image_cached", "text_out", "audio_out")


def quantize_usd(value: Decimal) -> Decimal:
    """Round to 6 decimal places, half up."""
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


def usage_tokens(usage: Mapping[str, Any]) -> dict[str, int]:
    """Token counts by kind from one `response.done` usage; missing fields count as 0.

    `text_in`/`audio_in`/`image_in` include the cached tokens counted in `*_cached`.
    Raises ValueError (naming the field) for a negative or non-integer count, or more
    cached than input tokens.
    """
    if not isinstance(usage, Mapping):
        raise ValueError("usage: expected an object")
    inp = _section(usage, "input_token_details", "usage.")
    cached = _section(inp, "cached_tokens_details", "usage.input_token_details.")
    out = _section(usage, "output_token_details", "usage.")
    in_at = "usage.input_token_details."
    cached_at = in_at + "cached_tokens_details."
    out_at = "usage.output_token_details."
    tokens = {
        "text_in": _count(inp, "text_tokens", in_at),
        "text_cached": _count(cached, "text_tokens", cached_at),
        "audio_in": _count(inp, "audio_tokens", in_at),
        "audio_cached": _count(cached, "audio_tokens", cached_at),
        "image_in": _count(inp, "image_tokens", in_at),
        "image_cached": _count(cached, "image_tokens", cached_at),
        "text_out": _count(out, "text_tokens", out_at),
        "audio_out": _count(out, "audio_tokens", out_at),
    }
    for kind in ("text", "audio", "image"):
        if tokens[f"{kind}_cached"] > tokens[f"{kind}_in"]:
            raise ValueError(f"usage: more cached {kind} tokens than {kind} input tokens")
    return tokens


def tokens_cost_usd(tokens: Mapping[str, int], prices: Prices) -> Decimal:
    """Unrounded USD cost of token counts by kind (see `usage_tokens`)."""
    total = (
        (tokens["text_in"] - tokens["text_cached"]) * prices.text_in_usd
        + tokens["text_cached"] * prices.text_cached_usd
        + (tokens["audio_in"] - tokens["audio_cached"]) * prices.audio_in_usd
        + tokens["audio_cached"] * prices.audio_cached_usd
        + tokens["text_out"] * prices.text_out_usd
        + tokens["audio_out"] * prices.audio_out_usd
    )
    return total / PER_MILLION


def usage_cost_usd(usage: Mapping[str, Any], prices: Prices) -> Decimal:
    """USD cost of one `response.done` usage, rounded to 6 places."""
    return quantize_usd(tokens_cost_usd(usage_tokens(usage), prices))


def twilio_cost_usd(seconds: float, prices: Prices) -> Decimal:
    """Twilio voice cost of a call lasting `seconds`: billed per started minute."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError("call duration must be a non-negative number of seconds")
    minutes = math.ceil(Decimal(str(seconds)) / 60)
    return quantize_usd(minutes * prices.twilio_per_min_usd)


class CallCost:
    """Accumulates one call's usage; `total_usd()` prices it, `details()` shows the counts."""

    def __init__(self, prices: Prices) -> None:
        self.prices = prices
        self.responses = 0
        self.tokens = dict.fromkeys(TOKEN_KINDS, 0)
        self.transcriptions = 0
        self.transcription_input_tokens = 0
        self.transcription_output_tokens = 0
        self.transcription_seconds = Decimal(0)

    def add_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Add one `response.done` usage (cancelled responses too: they are billed).

        A null usage (a failed response) adds nothing. On a malformed usage, raises
        ValueError and changes nothing.
        """
        if usage is None:
            return
        tokens = usage_tokens(usage)
        for kind, n in tokens.items():
            self.tokens[kind] += n
        self.responses += 1

    def add_transcription_usage(self, usage: Mapping[str, Any]) -> None:
        """Record the `usage` of an input transcription `.completed` event.

        Accepts `{type:"tokens", input_tokens, output_tokens}` or `{type:"duration", seconds}`;
        raises ValueError and changes nothing otherwise.
        """
        if not isinstance(usage, Mapping):
            raise ValueError("transcription usage: expected an object")
        kind = usage.get("type")
        if kind == "tokens":
            inp = _count(usage, "input_tokens", "transcription usage.")
            outp = _count(usage, "output_tokens", "transcription usage.")
            self.transcription_input_tokens += inp
            self.transcription_output_tokens += outp
        elif kind == "duration":
            secs = usage.get("seconds")
            if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not math.isfinite(secs) or secs < 0:
                raise ValueError("transcription usage.seconds: expected a non-negative number")
            self.transcription_seconds += Decimal(str(secs))
        else:
            raise ValueError("transcription usage.type: expected 'tokens' or 'duration'")
        self.transcriptions += 1

    def realtime_usd(self) -> Decimal:
        """The Realtime model cost so far, rounded to 6 places."""
        return quantize_usd(tokens_cost_usd(self.tokens, self.prices))

    def _transcription_usd(self) -> Decimal:
        p = self.prices
        tokens = (self.transcription_input_tokens * p.transcription_in_usd
                  + self.transcription_output_tokens * p.transcription_out_usd) / PER_MILLION
        return tokens + self.transcription_seconds / 60 * p.transcription_per_min_usd

    def transcription_usd(self) -> Decimal:
        """The input transcription cost so far, rounded to 6 places."""
        return quantize_usd(self._transcription_usd())

    def total_usd(self, duration_s: float) -> Decimal:
        """Realtime and transcription cost plus Twilio minutes for a call of `duration_s`, rounded to 6 places."""
        return quantize_usd(tokens_cost_usd(self.tokens, self.prices) + self._transcription_usd()
                            + twilio_cost_usd(duration_s, self.prices))

    def details(self) -> dict[str, Any]:
        """Counts for the call record: responses, tokens by kind, transcription usage, USD."""
        return {
            "responses": self.responses,
            "tokens": dict(self.tokens),
            "transcriptions": self.transcriptions,
            "transcription": {
                "input_tokens": self.transcription_input_tokens,
                "output_tokens": self.transcription_output_tokens,
                "seconds": str(self.transcription_seconds),
            },
            "realtime_usd": str(self.realtime_usd()),
            "transcription_usd": str(self.transcription_usd()),
        }


def _section(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}{key}: expected an object")
    return value


def _count(parent: Mapping[str, Any], key: str, where: str) -> int:
    value = parent.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}{key}: expected a non-negative whole number, got {value!r}")
    return value
