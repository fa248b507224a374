"""Canary analysis: challenger vs champion over one window of request-log rows, and the step decision.

Pure: pandas frames in, numbers and a decision out. The frames have the request
log's columns (`ROW_COLUMNS`), one row per request of that arm in the window.

Statistics, chosen for being deterministic, prior-free and easy to audit:

* error rate and feedback positive rate use a one-sided two-proportion z-test
  with a margin and the unpooled (Wald) standard error: for errors
  H1: p_challenger - p_champion > `max_error_rate_increase`; for feedback
  H1: p_champion - p_challenger > `max_feedback_drop`. The check fails when the
  observed gap exceeds the margin *and* p < `alpha`, so a handful of unlucky
  requests never aborts a good version, while a 20% error rate on a few dozen
  requests does. With both rates at 0 or 1 (zero variance) the gap alone decides.
* p95 latency and p95 TTFT (successful requests) fail above `max_*_p95_ratio`
  times the champion's, but only when the gap is also above `min_latency_delta_ms`,
  so a 1 ms vs 2 ms stub never counts as "twice as slow".
* cost per query and mean output tokens (successful requests) fail above their ratio.

Cache hits are left out: they measure the cache, not the version under test.
Feedback is judged only when both arms have `min_feedback_per_arm` ratings;
with fewer it is reported as not judged, never a reason to hold (ratings are
sparse and would otherwise stall every canary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from flywheel.settings import PromoteParams

ROW_COLUMNS = (
    "request_id",
    "ts",
    "arm",
    "model_version",
    "prompt_version",
    "status",
    "cache_hit",
    "ttft_ms",
    "latency_ms",
    "cost_usd",
    "completion_tokens",
    "feedback_score",
)

Decision = Literal["continue", "hold", "abort"]


@dataclass(frozen=True)
class ArmStats:
    """What one arm did in the window."""

    requests: int
    errors: int
    error_rate: float | None
    latency_p95_ms: float | None
    ttft_p95_ms: float | None
    cost_per_query: float | None
    mean_output_tokens: float | None
    rated: int
    positive: int
    positive_rate: float | None


@dataclass(frozen=True)
class Check:
    """One metric compared: both arms' values, the rule, and whether it passed (None: not judged)."""

    metric: str
    challenger: float | None
    champion: float | None
    rule: str
    passed: bool | None
    detail: str = ""

    def describe(self) -> str:
        """E.g. `error_rate 0.2 vs 0 (rule: ...; z=3.2 p=0.0007)`."""
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.metric} {_fmt(self.challenger)} vs {_fmt(self.champion)} (rule: {self.rule}{extra})"


@dataclass(frozen=True)
class Analysis:
    """The comparison of one window: per-arm figures and every check."""

    challenger: ArmStats
    champion: ArmStats
    checks: tuple[Check, ...]
    min_requests: int

    @property
    def enough_data(self) -> bool:
        """Both arms reached `min_requests_per_arm`."""
        return min(self.challenger.requests, self.champion.requests) >= self.min_requests

    def failed(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(check for check in self.checks if check.passed is False)

    def numbers(self) -> dict[str, object]:
        """Everything as plain data, for the audit log."""
        return {
            "challenger": vars(self.challenger),
            "champion": vars(self.champion),
            "checks": [vars(check) for check in self.checks],
        }


@dataclass(frozen=True)
class StepDecision:
    """Continue to the next weight, hold (analyse again at this weight) or abort; and why."""

    decision: Decision
    reason: str
    failed_metrics: tuple[str, ...] = ()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _p95(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.quantile(0.95)) if len(values) else None


def _mean(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def arm_stats(rows: pd.DataFrame) -> ArmStats:
    """The figures of one arm's rows (cache hits left out)."""
    rows = rows[~rows["cache_hit"].astype(bool)] if len(rows) else rows
    n = len(rows)
    errors = int((rows["status"] != "ok").sum()) if n else 0
    ok = rows[rows["status"] == "ok"] if n else rows
    scores = pd.to_numeric(rows["feedback_score"], errors="coerce").dropna() if n else pd.Series(dtype=float)
    positive = int((scores > 0).sum())
    return ArmStats(
        requests=n,
        errors=errors,
        error_rate=errors / n if n else None,
        latency_p95_ms=_p95(ok["latency_ms"]) if n else None,
        ttft_p95_ms=_p95(pd.to_numeric(ok["ttft_ms"], errors="coerce")) if n else None,
        cost_per_query=_mean(ok["cost_usd"]) if n else None,
        mean_output_tokens=_mean(ok["completion_tokens"].astype(float)) if n else None,
        rated=len(scores),
        positive=positive,
        positive_rate=positive / len(scores) if len(scores) else None,
    )


def gap_test(high: tuple[int, int], low: tuple[int, int], margin: float) -> tuple[float, float]:
    """One-sided z-test of H1: rate(high) - rate(low) > margin, unpooled SE; returns (z, p).

    `high` and `low` are (successes, trials). Zero variance: z is +-inf by the sign of the gap.
    """
    (x1, n1), (x2, n2) = high, low
    p1, p2 = x1 / n1, x2 / n2
    gap = p1 - p2 - margin
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    if se == 0.0:
        # No variance (both rates 0 or 1): the sign of the gap is the whole answer.
        return (math.inf, 0.0) if gap > 0 else (-math.inf, 1.0) if gap < 0 else (0.0, 0.5)
    z = gap / se
    p_value = 0.5 * math.erfc(z / math.sqrt(2))
    return z, p_value


def _ratio_check(
    metric: str, challenger: float | None, champion: float | None, ratio: float, floor: float = 0.0
) -> Check:
    rule = f"<= {ratio:g} x champion" + (f" or within {floor:g}" if floor else "")
    if challenger is None or champion is None:
        return Check(metric, challenger, champion, rule, None, "no successful requests on an arm")
    too_high = challenger > champion * ratio and challenger - champion > floor
    shown = f"ratio {challenger / champion:.3g}" if champion > 0 else "champion is 0"
    return Check(metric, challenger, champion, rule, not too_high, shown)


def _error_check(challenger: ArmStats, champion: ArmStats, params: PromoteParams) -> Check:
    margin, alpha = params.max_error_rate_increase, params.alpha
    rule = f"<= champion + {margin:g} (one-sided z-test, alpha {alpha:g})"
    if not challenger.requests or not champion.requests:
        return Check("error_rate", challenger.error_rate, champion.error_rate, rule, None, "no requests")
    z, p = gap_test((challenger.errors, challenger.requests), (champion.errors, champion.requests), margin)
    assert challenger.error_rate is not None and champion.error_rate is not None  # requests > 0 above
    worse = challenger.error_rate - champion.error_rate > margin and p < alpha
    return Check(
        "error_rate", challenger.error_rate, champion.error_rate, rule, not worse, f"z={z:.3g} p={p:.3g}"
    )


def _feedback_check(challenger: ArmStats, champion: ArmStats, params: PromoteParams) -> Check:
    drop, alpha, need = params.max_feedback_drop, params.alpha, params.min_feedback_per_arm
    rule = f">= champion - {drop:g} (one-sided z-test, alpha {alpha:g})"
    metric = "feedback_positive_rate"
    if min(challenger.rated, champion.rated) < need:
        detail = f"not judged: {challenger.rated} and {champion.rated} ratings, need {need} per arm"
        return Check(metric, challenger.positive_rate, champion.positive_rate, rule, None, detail)
    z, p = gap_test((champion.positive, champion.rated), (challenger.positive, challenger.rated), drop)
    assert challenger.positive_rate is not None and champion.positive_rate is not None  # rated >= need
    worse = champion.positive_rate - challenger.positive_rate > drop and p < alpha
    detail = f"z={z:.3g} p={p:.3g}, {challenger.rated} and {champion.rated} ratings"
    return Check(metric, challenger.positive_rate, champion.positive_rate, rule, not worse, detail)


def analyse(challenger_rows: pd.DataFrame, champion_rows: pd.DataFrame, params: PromoteParams) -> Analysis:
    """Compare the two arms' rows of one window on every metric."""
    ch, base = arm_stats(challenger_rows), arm_stats(champion_rows)
    floor = params.min_latency_delta_ms
    checks = (
        _error_check(ch, base, params),
        _ratio_check(
            "latency_p95_ms", ch.latency_p95_ms, base.latency_p95_ms, params.max_latency_p95_ratio, floor
        ),
        _ratio_check("ttft_p95_ms", ch.ttft_p95_ms, base.ttft_p95_ms, params.max_ttft_p95_ratio, floor),
        _ratio_check("cost_per_query", ch.cost_per_query, base.cost_per_query, params.max_cost_ratio),
        _ratio_check(
            "mean_output_tokens",
            ch.mean_output_tokens,
            base.mean_output_tokens,
            params.max_output_tokens_ratio,
        ),
        _feedback_check(ch, base, params),
    )
    return Analysis(challenger=ch, champion=base, checks=checks, min_requests=params.min_requests_per_arm)


def decide(analysis: Analysis, *, holds: int, failures: int, params: PromoteParams) -> StepDecision:
    """The step's decision, given the holds at this step and the failed analyses so far.

    Too little data holds, up to `max_holds` per step, then aborts; failed checks
    abort once `failure_limit` analyses have failed (below it: hold and re-analyse
    on fresh rows); otherwise continue.
    """
    ch, base = analysis.challenger, analysis.champion
    if not analysis.enough_data:
        counts = (
            f"challenger {ch.requests}, champion {base.requests} requests "
            f"(need {params.min_requests_per_arm} per arm)"
        )
        if holds >= params.max_holds:
            return StepDecision(
                "abort", f"not enough traffic after {holds} holds: {counts}", ("min_requests",)
            )
        return StepDecision("hold", f"not enough traffic (hold {holds + 1} of {params.max_holds}): {counts}")
    failed = analysis.failed()
    if failed:
        names = tuple(check.metric for check in failed)
        details = "; ".join(check.describe() for check in failed)
        if failures + 1 >= params.failure_limit:
            return StepDecision("abort", f"{', '.join(names)} failed: {details}", names)
        return StepDecision(
            "hold", f"failure {failures + 1} of {params.failure_limit}, re-analysing: {details}", names
        )
    return StepDecision("continue", "all checks passed: " + "; ".join(c.describe() for c in analysis.checks))
