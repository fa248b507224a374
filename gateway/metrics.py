"""Prometheus metrics of one gateway app, in its own registry (two apps in a process never mix counts).

Labels: `arm` is champion | challenger, or `none` for requests refused before a route
was chosen (401, 400, 413); `code` is the HTTP status. Counters appear with the
`_total` suffix Prometheus adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NO_ARM = "none"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Gateway overhead is sub-millisecond and the local model takes seconds: buckets span both.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class _ArmSeries:
    """The children of one arm, resolved once: `.labels()` takes a lock and a dict lookup per call."""

    latency: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    cost: Counter


class GatewayMetrics:
    """The gateway's counters and histograms, and their text exposition."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flywheel_gateway_requests",
            "Requests answered, by arm, status and HTTP code.",
            ["arm", "status", "code"],
            registry=r,
        )
        self.errors = Counter(
            "flywheel_gateway_errors",
            "Failed requests, by arm and kind of failure.",
            ["arm", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "flywheel_gateway_request_latency_seconds",
            "Time from request to last byte, by arm.",
            ["arm"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "flywheel_gateway_ttft_seconds",
            "Time to first token, by arm.",
            ["arm"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "flywheel_gateway_prompt_tokens", "Prompt tokens of answered requests.", ["arm"], registry=r
        )
        self.completion_tokens = Counter(
            "flywheel_gateway_completion_tokens",
            "Completion tokens of answered requests.",
            ["arm"],
            registry=r,
        )
        self.cost = Counter(
            "flywheel_gateway_cost_usd", "Cost from the price table, USD.", ["arm"], registry=r
        )
        self.cache_hits = Counter(
            "flywheel_gateway_cache_hits",
            "Answers served from the cache, by kind.",
            ["arm", "kind"],
            registry=r,
        )
        self.queue_rejections = Counter(
            "flywheel_gateway_queue_rejections",
            "Requests refused because the model queue was full.",
            ["arm"],
            registry=r,
        )
        self.rate_limited = Counter(
            "flywheel_gateway_rate_limited", "Requests refused by the token rate limit.", registry=r
        )
        self.in_flight = Gauge("flywheel_gateway_in_flight", "Requests being answered now.", registry=r)
        self._arms: dict[str, _ArmSeries] = {}

    def _arm(self, arm: str) -> _ArmSeries:
        series = self._arms.get(arm)
        if series is None:
            series = self._arms[arm] = _ArmSeries(
                self.latency.labels(arm),
                self.ttft.labels(arm),
                self.prompt_tokens.labels(arm),
                self.completion_tokens.labels(arm),
                self.cost.labels(arm),
            )
        return series

    def answered(
        self,
        arm: str,
        code: int,
        latency_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        cache_kind: str | None,
    ) -> None:
        """Count one successful answer."""
        self.requests.labels(arm, "ok", str(code)).inc()
        series = self._arm(arm)
        series.latency.observe(latency_s)
        if ttft_s is not None:
            series.ttft.observe(ttft_s)
        series.prompt_tokens.inc(prompt_tokens)
        series.completion_tokens.inc(completion_tokens)
        if cost_usd:
            series.cost.inc(cost_usd)
        if cache_kind is not None:
            self.cache_hits.labels(arm, cache_kind).inc()

    def failed(self, arm: str, code: int, kind: str, latency_s: float | None = None) -> None:
        """Count one refused or failed request."""
        self.requests.labels(arm, "error", str(code)).inc()
        self.errors.labels(arm, kind).inc()
        if kind == "queue_full":
            self.queue_rejections.labels(arm).inc()
        elif kind == "rate_limited":
            self.rate_limited.inc()
        if latency_s is not None:
            self._arm(arm).latency.observe(latency_s)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
