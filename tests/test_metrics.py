"""Prometheus exposition of voicebridge metrics (voicebridge.ops.metrics)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from voicebridge.ops.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed back from the rendered text."""
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_render_exposes_updated_counters_gauges_and_histograms() -> None:
    """After updates the text exposition carries the new sample values."""
    m = Metrics()
    m.live_calls.inc()
    m.live_calls.inc()
    m.live_calls.dec()
    m.calls_total.labels("completed").inc()
    m.calls_total.labels("completed").inc()
    m.calls_total.labels("caller_hung_up").inc()
    m.barge_ins_total.inc(3)
    m.realtime_reconnects_total.inc()
    m.protocol_errors_total.labels("twilio").inc()
    m.webhook_deliveries_total.labels("retry").inc()
    m.webhook_deliveries_total.labels("delivered").inc()
    m.frames_dropped_total.labels("out").inc(7)
    m.time_to_first_audio_seconds.observe(0.3)
    m.forwarding_latency_seconds.labels("in").observe(0.0004)
    m.add_call_cost(Decimal("0.123456"))
    got = samples(m)
    assert got[("voicebridge_live_calls", ())] == 1
    assert got[("voicebridge_calls_total", (("outcome", "completed"),))] == 2
    assert got[("voicebridge_calls_total", (("outcome", "caller_hung_up"),))] == 1
    assert got[("voicebridge_barge_ins_total", ())] == 3
    assert got[("voicebridge_realtime_reconnects_total", ())] == 1
    assert got[("voicebridge_protocol_errors_total", (("source", "twilio"),))] == 1
    assert got[("voicebridge_webhook_deliveries_total", (("state", "retry"),))] == 1
    assert got[("voicebridge_webhook_deliveries_total", (("state", "delivered"),))] == 1
    assert got[("voicebridge_frames_dropped_total", (("direction", "out"),))] == 7
    assert got[("voicebridge_time_to_first_audio_seconds_bucket", (("le", "0.2"),))] == 0
    assert got[("voicebridge_time_to_first_audio_seconds_bucket", (("le", "0.3"),))] == 1
    assert got[("voicebridge_time_to_first_audio_seconds_count", ())] == 1
    assert got[("voicebridge_forwarding_latency_seconds_bucket", (("direction", "in"), ("le", "0.0005")))] == 1
    assert got[("voicebridge_forwarding_latency_seconds_bucket", (("direction", "in"), ("le", "0.00025")))] == 0
    assert got[("voicebridge_call_cost_usd_total", ())] == pytest.approx(0.123456)


def test_known_labels_are_exported_at_zero_before_any_event() -> None:
    """Directions, peers and webhook states show up as 0 on a fresh instance."""
    got = samples(Metrics())
    for direction in ("in", "out"):
        assert got[("voicebridge_frames_dropped_total", (("direction", direction),))] == 0
        assert got[("voicebridge_forwarding_latency_seconds_count", (("direction", direction),))] == 0
    for source in ("twilio", "realtime"):
        assert got[("voicebridge_protocol_errors_total", (("source", source),))] == 0
    for state in ("delivered", "retry", "dead"):
        assert got[("voicebridge_webhook_deliveries_total", (("state", state),))] == 0


def test_histogram_buckets_span_the_documented_ranges() -> None:
    """First-audio buckets run 5 ms..2 s, forwarding buckets 0.1 ms..100 ms."""
    got = samples(Metrics())
    first = sorted(float(dict(k[1])["le"]) for k in got if k[0] == "voicebridge_time_to_first_audio_seconds_bucket")
    fwd = sorted(
        float(dict(k[1])["le"])
        for k in got
        if k[0] == "voicebridge_forwarding_latency_seconds_bucket" and dict(k[1])["direction"] == "in"
    )
    assert (first[0], first[-2]) == (0.005, 2.0) and first[-1] == float("inf")
    assert (fwd[0], fwd[-2]) == (0.0001, 0.1) and fwd[-1] == float("inf")


def test_instances_do_not_share_state() -> None:
    """Two Metrics objects have separate registries and counts."""
    a, b = Metrics(), Metrics()
    a.barge_ins_total.inc()
    assert samples(a)[("voicebridge_barge_ins_total", ())] == 1
    assert samples(b)[("voicebridge_barge_ins_total", ())] == 0


def test_realtime_error_codes_are_bounded() -> None:
    """Known-shaped codes get their own label; odd or excess codes fold into `other`."""
    m = Metrics()
    m.count_realtime_error("session_expired")
    m.count_realtime_error("session_expired")
    m.count_realtime_error(None)
    m.count_realtime_error("Bad Code <script>")
    for i in range(100):
        m.count_realtime_error(f"code_{i}")
    got = samples(m)
    codes = {dict(k[1])["code"] for k in got if k[0] == "voicebridge_realtime_errors_total"}
    assert got[("voicebridge_realtime_errors_total", (("code", "session_expired"),))] == 2
    assert len(codes) <= 51
    assert got[("voicebridge_realtime_errors_total", (("code", "other"),))] == 2 + 100 - (len(codes) - 2)


def test_render_content_type_is_prometheus_text() -> None:
    """`render()` returns the text-format content type for the HTTP response."""
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain; version=")
    assert b"# TYPE voicebridge_live_calls gauge" in body


def test_negative_call_cost_is_refused() -> None:
    """A negative cost raises instead of corrupting the counter."""
    m = Metrics()
    with pytest.raises(ValueError, match="negative"):
        m.add_call_cost(Decimal("-0.01"))
    assert samples(m)[("voicebridge_call_cost_usd_total", ())] == 0
