"""Canary analysis: a good arm continues; errors, slowness and worse feedback abort; too little data holds."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from flywheel.settings import PromoteParams
from tasks.promote.analysis import ROW_COLUMNS, analyse, decide, gap_test

PARAMS = PromoteParams(min_requests_per_arm=50, min_feedback_per_arm=30, max_holds=2, failure_limit=1)


def rows(
    n: int,
    *,
    arm: str = "champion",
    error_every: int = 0,
    latency_ms: float = 400.0,
    ttft_ms: float = 80.0,
    cost: float = 0.001,
    tokens: int = 60,
    rated_every: int = 0,
    positive_share: float = 0.8,
) -> pd.DataFrame:
    """`n` request-log rows of one arm; every `error_every`-th fails; every `rated_every`-th is rated."""
    records = []
    rated = 0
    for i in range(n):
        failed = bool(error_every) and i % error_every == 0
        score = None
        if rated_every and i % rated_every == 0:
            # Deterministic share of thumbs-up among the rated rows.
            score = 1.0 if (rated % 10) < round(positive_share * 10) else -1.0
            rated += 1
        records.append(
            {
                "request_id": f"{arm}-{i}",
                "ts": datetime(2026, 1, 1, tzinfo=UTC),
                "arm": arm,
                "model_version": "2" if arm == "challenger" else "1",
                "prompt_version": "1",
                "status": "error" if failed else "ok",
                "cache_hit": False,
                "ttft_ms": ttft_ms * (1 + (i % 10) / 100),
                "latency_ms": latency_ms * (1 + (i % 10) / 100),
                "cost_usd": 0.0 if failed else cost,
                "completion_tokens": 0 if failed else tokens,
                "feedback_score": score,
            }
        )
    return pd.DataFrame(records, columns=list(ROW_COLUMNS))


def test_a_challenger_like_the_champion_continues() -> None:
    # given two arms that behave alike
    analysis = analyse(rows(60, arm="challenger"), rows(600), PARAMS)
    # when decided
    decision = decide(analysis, holds=0, failures=0, params=PARAMS)
    # then the canary continues, with every check passed or not judged
    assert decision.decision == "continue", f"a good challenger continues: {decision}"
    assert not analysis.failed(), f"no failed checks: {analysis.failed()}"


@pytest.mark.parametrize(
    ("challenger", "metric"),
    [
        (rows(100, arm="challenger", error_every=5), "error_rate"),
        (rows(100, arm="challenger", latency_ms=1200.0), "latency_p95_ms"),
        (rows(100, arm="challenger", ttft_ms=800.0), "ttft_p95_ms"),
        (rows(100, arm="challenger", cost=0.003), "cost_per_query"),
        (rows(100, arm="challenger", tokens=200), "mean_output_tokens"),
        (rows(100, arm="challenger", rated_every=1, positive_share=0.4), "feedback_positive_rate"),
    ],
    ids=["20% errors", "3x slower", "slow first token", "3x cost", "verbose", "worse feedback"],
)
def test_a_worse_challenger_aborts_naming_the_metric(challenger: pd.DataFrame, metric: str) -> None:
    # given a challenger worse on one metric than a healthy champion
    champion = rows(500, rated_every=1, positive_share=0.8)
    analysis = analyse(challenger, champion, PARAMS)
    # when decided
    decision = decide(analysis, holds=0, failures=0, params=PARAMS)
    # then it aborts, naming that metric and its numbers
    assert decision.decision == "abort", f"should abort on {metric}: {decision}"
    assert decision.failed_metrics == (metric,), f"only {metric} fails: {decision.failed_metrics}"
    assert metric in decision.reason and "vs" in decision.reason, (
        f"the reason shows numbers: {decision.reason}"
    )


def test_error_rate_numbers_are_in_the_reason() -> None:
    analysis = analyse(rows(100, arm="challenger", error_every=5), rows(500), PARAMS)
    decision = decide(analysis, holds=0, failures=0, params=PARAMS)
    assert "error_rate 0.2 vs 0" in decision.reason, f"20% vs 0%: {decision.reason}"
    assert analysis.challenger.errors == 20, f"20 of 100 failed: {analysis.challenger}"


def test_one_unlucky_error_in_a_small_window_does_not_abort() -> None:
    # 1 error in 60 (1.7%) vs 0 in 600 is within the 2-point margin
    analysis = analyse(rows(60, arm="challenger", error_every=60), rows(600), PARAMS)
    assert decide(analysis, holds=0, failures=0, params=PARAMS).decision == "continue", analysis.checks[0]


def test_a_small_latency_gap_is_not_a_slowdown() -> None:
    # 3 ms vs 1 ms is 3x, but far under min_latency_delta_ms
    analysis = analyse(
        rows(60, arm="challenger", latency_ms=3.0, ttft_ms=3.0),
        rows(600, latency_ms=1.0, ttft_ms=1.0),
        PARAMS,
    )
    assert not analysis.failed(), f"a 2 ms gap is noise: {analysis.failed()}"


def test_too_few_requests_holds_then_aborts_after_max_holds() -> None:
    # given a challenger arm with 10 requests (50 needed)
    analysis = analyse(rows(10, arm="challenger"), rows(600), PARAMS)
    # when decided with 0, 1, then 2 (= max_holds) holds behind it
    decisions = [decide(analysis, holds=h, failures=0, params=PARAMS) for h in range(3)]
    # then it holds twice, then aborts for lack of traffic
    assert [d.decision for d in decisions] == ["hold", "hold", "abort"], f"{decisions}"
    assert "not enough traffic" in decisions[-1].reason, decisions[-1].reason
    assert "challenger 10" in decisions[0].reason, f"the counts are shown: {decisions[0].reason}"


def test_a_failure_below_the_failure_limit_holds_for_a_second_opinion() -> None:
    params = PromoteParams(min_requests_per_arm=50, failure_limit=2)
    analysis = analyse(rows(100, arm="challenger", error_every=5), rows(500), params)
    first = decide(analysis, holds=0, failures=0, params=params)
    second = decide(analysis, holds=0, failures=1, params=params)
    assert first.decision == "hold" and first.failed_metrics == ("error_rate",), f"{first}"
    assert second.decision == "abort", f"the second failure reaches the limit: {second}"


def test_sparse_feedback_is_not_judged() -> None:
    analysis = analyse(rows(60, arm="challenger", rated_every=10, positive_share=0.0), rows(600), PARAMS)
    feedback = next(c for c in analysis.checks if c.metric == "feedback_positive_rate")
    assert feedback.passed is None and "not judged" in feedback.detail, f"{feedback}"


def test_cache_hits_are_left_out() -> None:
    challenger = rows(60, arm="challenger")
    challenger.loc[:9, "cache_hit"] = True
    analysis = analyse(challenger, rows(600), PARAMS)
    assert analysis.challenger.requests == 50, f"10 cache hits dropped: {analysis.challenger}"


def test_gap_test_is_one_sided_and_handles_zero_variance() -> None:
    z, p = gap_test((20, 100), (0, 500), 0.02)
    assert z > 3 and p < 0.001, f"20% vs 0% is significant: z={z} p={p}"
    assert gap_test((0, 100), (0, 100), 0.0)[1] == 0.5, "no difference, no variance: p=0.5"
    assert gap_test((100, 100), (0, 100), 0.02)[1] == 0.0, "all vs none: certain"
    assert gap_test((0, 100), (20, 100), 0.0)[1] > 0.99, "better is not worse"
