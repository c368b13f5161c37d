"""Prometheus metrics, one registry per `Metrics` instance (no process-wide state).

The app creates one `Metrics`, passes it to whatever counts, and serves `render()` on
`/metrics`. With several worker processes (`VOICEBRIDGE_WORKERS`), the supervisor gives every
worker the same `PROMETHEUS_MULTIPROC_DIR`: each process writes its values there, and whichever
worker answers a scrape renders the sum over all of them (prometheus_client's multiprocess
mode), counters of a restarted worker included; `voicebridge_live_calls` counts live workers' calls.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Time from the caller's first audio (or the call's start) to the first audio we play: 5 ms..2 s.
FIRST_AUDIO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)
# Time one audio frame spends inside the bridge: 0.1 ms..100 ms.
FORWARDING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

DIRECTIONS = ("in", "out")  # in = caller -> model, out = model -> caller
PROTOCOL_SOURCES = ("twilio", "realtime")
WEBHOOK_STATES = ("delivered", "retry", "dead")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by the supervisor for its workers
_LABEL_VALUE = re.compile(r"[a-z0-9_.-]{1,64}")
MAX_ERROR_CODES = 50


class Metrics:
    """Every voicebridge metric, registered in its own `CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._shared_dir = os.environ.get(MULTIPROCESS_ENV) or None  # workers: one exposition for all
        self.live_calls = Gauge("voicebridge_live_calls", "Calls in progress.", registry=r, multiprocess_mode="livesum")
        self.calls_total = Counter("voicebridge_calls", "Finished calls by outcome.", ["outcome"], registry=r)
        self.barge_ins_total = Counter("voicebridge_barge_ins", "Caller interruptions of agent audio.", registry=r)
        self.realtime_reconnects_total = Counter(
            "voicebridge_realtime_reconnects", "Realtime sessions reopened during a call.", registry=r
        )
        self.realtime_errors_total = Counter(
            "voicebridge_realtime_errors", "Realtime `error` events by code.", ["code"], registry=r
        )
        self.protocol_errors_total = Counter(
            "voicebridge_protocol_errors", "Unparseable messages by peer.", ["source"], registry=r
        )
        self.time_to_first_audio_seconds = Histogram(
            "voicebridge_time_to_first_audio_seconds",
            "Delay until the first agent audio of a turn is sent to the caller.",
            buckets=FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.forwarding_latency_seconds = Histogram(
            "voicebridge_forwarding_latency_seconds",
            "Time an audio frame spends in the bridge, by direction.",
            ["direction"],
            buckets=FORWARDING_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries_total = Counter(
            "voicebridge_webhook_deliveries", "Order webhook delivery attempts by result.", ["state"], registry=r
        )
        self.call_cost_usd_total = Counter(
            "voicebridge_call_cost_usd", "Estimated spend of finished calls in USD.", registry=r
        )
        self.frames_dropped_total = Counter(
            "voicebridge_frames_dropped", "Audio frames dropped because a queue was full.", ["direction"], registry=r
        )
        self.prewarm_total = Counter(
            "voicebridge_prewarm",
            "Pre-warmed Realtime sessions: hit (claimed by its stream), miss (the stream found none here and "
            "connected on its own), unclaimed (closed after VOICEBRIDGE_PREWARM_TTL_S).",
            ["result"], registry=r)
        self.unknown_numbers_total = Counter(
            "voicebridge_unknown_numbers", "Calls refused because no business answers the number called.", registry=r)
        # Known label values start at 0 so dashboards and rate() see them before the first event.
        for direction in DIRECTIONS:
            self.forwarding_latency_seconds.labels(direction)
            self.frames_dropped_total.labels(direction)
        for source in PROTOCOL_SOURCES:
            self.protocol_errors_total.labels(source)
        for state in WEBHOOK_STATES:
            self.webhook_deliveries_total.labels(state)
        for result in ("hit", "miss", "unclaimed"):
            self.prewarm_total.labels(result)
        self._error_codes: set[str] = set()

    def count_realtime_error(self, code: str | None) -> None:
        """Count one Realtime error; odd or too many distinct codes are counted as `other`."""
        label = code if code and _LABEL_VALUE.fullmatch(code) else "other"
        if label not in self._error_codes:
            if len(self._error_codes) >= MAX_ERROR_CODES:
                label = "other"
            self._error_codes.add(label)
        self.realtime_errors_total.labels(label).inc()

    def add_call_cost(self, usd: Decimal) -> None:
        """Add one call's estimated cost (a non-negative Decimal, see `voicebridge.ops.cost`)."""
        if usd < 0:
            raise ValueError("a call cost cannot be negative")
        self.call_cost_usd_total.inc(float(usd))

    def render(self) -> tuple[bytes, str]:
        """The text exposition for `/metrics` and its Content-Type."""
        if self._shared_dir is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            everyone = CollectorRegistry()
            MultiProcessCollector(everyone, path=self._shared_dir)  # type: ignore[no-untyped-call]
            return generate_latest(everyone), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
