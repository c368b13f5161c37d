"""Per-call cost from Realtime usage and Twilio minutes, checked by hand (voicebridge.ops.cost)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from voicebridge.config import Prices
from voicebridge.ops.cost import CallCost, twilio_cost_usd, usage_cost_usd

PRICES = Prices()  # gpt-realtime defaults: text 4 / 0.40 / 16, audio 32 / 0.40 / 64, Twilio 0.0125/min

# The `response.done` usage from the protocol reference.
USAGE: dict[str, Any] = {
    "total_tokens": 821,
    "input_tokens": 789,
    "output_tokens": 32,
    "input_token_details": {
        "text_tokens": 313, "audio_tokens": 476, "image_tokens": 0, "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 9, "audio_tokens": 23},
}


def test_reference_usage_costs_what_the_formula_says() -> None:
    """(57*4 + 256*0.40 + 92*32 + 384*0.40 + 9*16 + 23*64) / 1e6 = 0.005044 USD."""
    assert usage_cost_usd(USAGE, PRICES) == Decimal("0.005044")


def test_uncached_usage_cost() -> None:
    """1000 text in, 2000 audio in, 100 text out, 500 audio out = 0.101600 USD."""
    usage = {
        "input_token_details": {"text_tokens": 1000, "audio_tokens": 2000},
        "output_token_details": {"text_tokens": 100, "audio_tokens": 500},
    }
    cost = usage_cost_usd(usage, PRICES)
    assert cost == Decimal("0.1016")
    assert str(cost) == "0.101600"


def test_configured_prices_are_used() -> None:
    """Mini-model prices: (57*0.60 + 256*0.06 + 92*10 + 384*0.30 + 9*2.40 + 23*20) / 1e6 = 0.001566."""
    mini = Prices(
        text_in_usd=Decimal("0.60"), text_cached_usd=Decimal("0.06"), text_out_usd=Decimal("2.40"),
        audio_in_usd=Decimal("10"), audio_cached_usd=Decimal("0.30"), audio_out_usd=Decimal("20"),
    )
    assert usage_cost_usd(USAGE, mini) == Decimal("0.001566")  # 0.00156636 rounded


def test_rounding_is_half_up_to_six_places() -> None:
    """One token at 0.50/1M is 0.0000005, which rounds up to 0.000001."""
    half = Prices(text_cached_usd=Decimal("0.50"))
    one_cached = {"input_token_details": {"text_tokens": 1, "cached_tokens_details": {"text_tokens": 1}}}
    assert usage_cost_usd(one_cached, half) == Decimal("0.000001")
    assert usage_cost_usd(one_cached, PRICES) == Decimal("0.000000")  # 0.0000004


def test_call_cost_sums_tokens_before_rounding() -> None:
    """Two responses of 0.0000004 each total 0.0000008, rounded once to 0.000001."""
    call = CallCost(PRICES)
    one_cached = {"input_token_details": {"text_tokens": 1, "cached_tokens_details": {"text_tokens": 1}}}
    call.add_usage(one_cached)
    call.add_usage(one_cached)
    assert call.realtime_usd() == Decimal("0.000001")


@pytest.mark.parametrize(
    ("seconds", "usd"),
    [(0, "0.000000"), (0.5, "0.012500"), (60, "0.012500"), (60.001, "0.025000"), (61, "0.025000"), (600, "0.125000")],
)
def test_twilio_bills_per_started_minute(seconds: float, usd: str) -> None:
    """Twilio voice minutes round up: 61 s is 2 minutes at 0.0125."""
    assert str(twilio_cost_usd(seconds, PRICES)) == usd


def test_call_total_adds_twilio_minutes_and_details_show_counts() -> None:
    """Reference usage twice + a 125 s call: 2*0.005044 + 3*0.0125 = 0.047588 USD."""
    call = CallCost(PRICES)
    call.add_usage(USAGE)
    call.add_usage(copy.deepcopy(USAGE))
    call.add_usage(None)  # a failed response without usage
    assert call.total_usd(125) == Decimal("0.047588")
    details = call.details()
    assert details["responses"] == 2
    assert details["tokens"] == {
        "text_in": 626, "text_cached": 512, "audio_in": 952, "audio_cached": 768,
        "image_in": 0, "image_cached": 0, "text_out": 18, "audio_out": 46,
    }
    assert details["realtime_usd"] == "0.010088"


def test_transcription_usage_is_recorded_and_priced() -> None:
    """Transcription tokens and seconds show in details and are added to the total."""
    call = CallCost(PRICES)
    call.add_transcription_usage({"type": "tokens", "input_tokens": 120, "output_tokens": 15, "total_tokens": 135})
    call.add_transcription_usage({"type": "duration", "seconds": 2.5})
    # 120 x 1.25/1M + 15 x 5/1M = 0.000225; 2.5 s x 0.006/60 = 0.00025; Twilio: one minute, 0.0125
    assert call.transcription_usd() == Decimal("0.000475")
    assert call.total_usd(30) == Decimal("0.012975")
    assert call.details()["transcription"] == {"input_tokens": 120, "output_tokens": 15, "seconds": "2.5"}
    assert call.details()["transcription_usd"] == "0.000475"
    assert call.details()["transcriptions"] == 2


def test_transcription_prices_come_from_the_settings() -> None:
    """VOICEBRIDGE_PRICE_TRANSCRIPTION_* set the transcription prices."""
    from voicebridge.config import Config

    prices = Config.from_env({"VOICEBRIDGE_PRICE_TRANSCRIPTION_IN_USD": "6", "VOICEBRIDGE_PRICE_TRANSCRIPTION_OUT_USD": "10",
                              "VOICEBRIDGE_PRICE_TRANSCRIPTION_PER_MIN_USD": "0"}, env_file=None).prices
    call = CallCost(prices)
    call.add_transcription_usage({"type": "tokens", "input_tokens": 1000, "output_tokens": 100})
    call.add_transcription_usage({"type": "duration", "seconds": 60})
    assert call.transcription_usd() == Decimal("0.007000")


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"input_token_details": {"text_tokens": -1}}, "usage.input_token_details.text_tokens"),
        ({"input_token_details": {"audio_tokens": "12"}}, "usage.input_token_details.audio_tokens"),
        ({"output_token_details": {"audio_tokens": 1.5}}, "usage.output_token_details.audio_tokens"),
        ({"output_token_details": {"text_tokens": True}}, "usage.output_token_details.text_tokens"),
        ({"input_token_details": []}, "usage.input_token_details"),
        ({"input_token_details": {"text_tokens": 1, "cached_tokens_details": {"text_tokens": 2}}}, "cached text"),
        ("not a dict", "usage"),
    ],
)
def test_malformed_usage_is_refused_and_changes_nothing(usage: Any, field: str) -> None:
    """Bad counts raise ValueError naming the field; the call's totals stay as they were."""
    call = CallCost(PRICES)
    call.add_usage(USAGE)
    before = call.details()
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        call.add_usage(usage)
    assert call.details() == before


@pytest.mark.parametrize(
    "usage", [{"type": "tokens", "input_tokens": -3}, {"type": "duration", "seconds": "2"}, {"type": "other"}, None]
)
def test_malformed_transcription_usage_is_refused(usage: Any) -> None:
    """Bad transcription usage raises ValueError and records nothing."""
    call = CallCost(PRICES)
    with pytest.raises(ValueError, match="transcription usage"):
        call.add_transcription_usage(usage)
    assert call.details()["transcriptions"] == 0


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_bad_duration_is_refused(seconds: float) -> None:
    """A negative or non-finite duration raises ValueError."""
    with pytest.raises(ValueError, match="duration"):
        twilio_cost_usd(seconds, PRICES)
