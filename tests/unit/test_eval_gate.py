"""The eval gate: paired bootstrap, win rate, the rules, and the decision's artifact and metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.settings import EvaluateParams
from tasks.evaluate.gate import (
    COST_PER_QUERY,
    LATENCY_P95,
    SAFETY,
    SUPERIORITY,
    GateInputError,
    Interval,
    align_items,
    ci_plot,
    decide,
    paired_bootstrap,
    score_distribution_plot,
    win_rate,
)

Mutation = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]
N_ITEMS = 300
OPS = {"latency_p95_ms": 800.0, "cost_per_query_usd": 0.001}
PARAMS = EvaluateParams(
    primary_metric="rougeL",
    bootstrap_samples=500,
    noninferior_metrics=("faithfulness",),
    min_improvement=0.01,
)


def _scores(shift: float = 0.0, faith_shift: float = 0.0, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline scores and a candidate on the same items, better by `shift` on rougeL on average."""
    rng = np.random.default_rng(seed)
    base_rouge = rng.uniform(0.2, 0.6, N_ITEMS)
    base_faith = rng.uniform(0.5, 0.9, N_ITEMS)
    ids = [f"q{i:04d}" for i in range(N_ITEMS)]
    baseline = pd.DataFrame({"item_id": ids, "rougeL": base_rouge, "faithfulness": base_faith})
    candidate = pd.DataFrame(
        {
            "item_id": ids,
            "rougeL": base_rouge + shift + rng.normal(0, 0.05, N_ITEMS),
            "faithfulness": base_faith + faith_shift + rng.normal(0, 0.02, N_ITEMS),
        }
    )
    # the candidate's rows arrive in another order: the gate must pair by item_id, not position
    return candidate.sample(frac=1.0, random_state=3).reset_index(drop=True), baseline


# --- paired_bootstrap -------------------------------------------------------------------------


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    # given one dataset
    rng = np.random.default_rng(0)
    cand, base = rng.normal(0.1, 1, 100), rng.normal(0, 1, 100)
    # when bootstrapped twice with one seed and once with another
    first = paired_bootstrap(cand, base, samples=1000, confidence=0.95, seed=42)
    again = paired_bootstrap(cand, base, samples=1000, confidence=0.95, seed=42)
    other = paired_bootstrap(cand, base, samples=1000, confidence=0.95, seed=43)
    # then the same seed gives the same interval, and the estimate does not depend on the seed
    assert first == again, f"same seed gave {first} then {again}"
    assert other != first, "a different seed should resample differently"
    assert first.estimate == pytest.approx(float(np.mean(cand - base))), (
        "estimate is the mean paired difference"
    )
    assert first.low < first.estimate < first.high, f"estimate outside its own CI: {first}"


def test_bootstrap_ci_covers_the_true_difference_at_about_the_nominal_rate() -> None:
    # given 200 simulated datasets whose true mean paired difference is 0.05
    true_diff, n, runs = 0.05, 60, 200
    rng = np.random.default_rng(2026)
    covered = 0
    for run in range(runs):
        base = rng.uniform(0, 1, n)
        cand = base + true_diff + rng.normal(0, 0.2, n)
        # when each gets a 95% paired bootstrap CI
        ci = paired_bootstrap(cand, base, samples=1000, confidence=0.95, seed=run)
        covered += ci.low <= true_diff <= ci.high
    # then about 95% of the intervals cover the truth
    coverage = covered / runs
    assert 0.90 <= coverage <= 0.99, f"95% CI covered the true difference in {coverage:.1%} of datasets"


def test_bootstrap_of_identical_scores_is_a_point_at_zero() -> None:
    scores = np.linspace(0, 1, 50)
    ci = paired_bootstrap(scores, scores.copy(), samples=200, confidence=0.95, seed=0)
    assert ci == Interval(0.0, 0.0, 0.0), f"identical scores should give a zero-width CI at 0, got {ci}"


@pytest.mark.parametrize(
    ("cand", "base", "message"),
    [
        ([1.0, 2.0], [1.0], "same length"),
        ([], [], "empty"),
        ([1.0, float("nan")], [1.0, 2.0], "NaN"),
    ],
)
def test_bootstrap_rejects_unpaired_or_bad_scores(cand: list[float], base: list[float], message: str) -> None:
    with pytest.raises(GateInputError, match=message):
        paired_bootstrap(np.array(cand), np.array(base), samples=100, confidence=0.95, seed=0)


# --- win_rate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cand", "base", "tie_margin", "expected"),
    [
        ([2, 2, 2, 2], [1, 1, 1, 1], 0.0, 1.0),  # all wins
        ([1, 1, 1, 1], [2, 2, 2, 2], 0.0, 0.0),  # all losses
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0, 0.5),  # all ties count half
        ([2, 1, 1, 0], [1, 1, 1, 1], 0.0, 0.5),  # one win, two ties, one loss
        ([2, 1, 3, 0], [1, 1, 1, 1], 0.0, 0.625),  # two wins, one tie, one loss
        ([1.05, 1.2, 1.0, 0.99], [1, 1, 1, 1], 0.1, 0.625),  # gaps within the margin are ties
    ],
)
def test_win_rate_counts_ties_half(
    cand: list[float], base: list[float], tie_margin: float, expected: float
) -> None:
    # when the win rate is computed
    rate = win_rate(np.array(cand, dtype=float), np.array(base, dtype=float), tie_margin=tie_margin)
    # then wins count one, ties half, and the interval brackets the share within [0, 1]
    assert rate.estimate == pytest.approx(expected), f"win rate {rate.estimate}, expected {expected}"
    assert 0.0 <= rate.low <= rate.estimate <= rate.high <= 1.0, f"bad Wilson interval {rate}"


def test_win_rate_interval_narrows_with_more_items() -> None:
    few = win_rate(np.array([1.0, 0.0] * 10), np.full(20, 0.5))
    many = win_rate(np.array([1.0, 0.0] * 1000), np.full(2000, 0.5))
    assert few.estimate == many.estimate == 0.5, "both are half wins"
    assert (many.high - many.low) < (few.high - few.low) / 5, f"CI should narrow: {few} vs {many}"


# --- decide -----------------------------------------------------------------------------------


def test_clearly_better_candidate_passes_with_ci_above_the_margin() -> None:
    # given a candidate better by 0.08 rougeL and as faithful, safe, fast and cheap as the baseline
    candidate, baseline = _scores(shift=0.08)
    # when the gate decides
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=PARAMS)
    # then it passes, with the primary CI's lower bound above the superiority margin
    assert decision.passed, f"expected pass, failed {decision.failed_rules}"
    assert decision.failed_rules == [], f"no rule should fail: {decision.failed_rules}"
    primary = decision.intervals["rougeL"]
    assert primary.low > PARAMS.min_improvement, f"CI lower bound {primary.low} not above the margin"
    assert decision.win_rate.estimate > 0.8, (
        f"a clearly better candidate should win most items: {decision.win_rate}"
    )
    assert decision.n_items == N_ITEMS, "every item should be paired"


def test_equal_candidate_fails_superiority() -> None:
    # given a candidate no better than the baseline
    candidate, baseline = _scores(shift=0.0)
    # when the gate decides
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=PARAMS)
    # then superiority, and only superiority, fails
    assert not decision.passed, "an equal candidate must not pass a superiority gate"
    assert decision.failed_rules == [SUPERIORITY], (
        f"expected only superiority to fail: {decision.failed_rules}"
    )


def test_candidate_worse_on_a_secondary_metric_fails_non_inferiority() -> None:
    candidate, baseline = _scores(shift=0.08, faith_shift=-0.1)
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=PARAMS)
    assert decision.failed_rules == ["non_inferiority/faithfulness"], f"got {decision.failed_rules}"


FACT_PARAMS = EvaluateParams(
    primary_metric="rougeL", bootstrap_samples=500, noninferior_metrics=("fact_hit",)
)


def _fact_hits(
    candidate_hits: list[bool | None], baseline_hits: list[bool | None]
) -> tuple[pd.DataFrame, ...]:
    """Score frames where the candidate has the better rougeL on every item, and the given fact hits."""
    n = len(candidate_hits)
    ids = [f"q{i:04d}" for i in range(n)]
    hits = {"dtype": "boolean"}
    baseline = pd.DataFrame({"item_id": ids, "rougeL": 0.15, "fact_hit": pd.array(baseline_hits, **hits)})
    candidate = pd.DataFrame({"item_id": ids, "rougeL": 0.35, "fact_hit": pd.array(candidate_hits, **hits)})
    return candidate, baseline


def test_a_candidate_that_learnt_the_answer_style_but_not_the_facts_fails_fact_hit() -> None:
    # rougeL rewards the answer template even when the fact is wrong (a model trained on
    # shuffled answers): the fact check is what catches it
    candidate, baseline = _fact_hits([False] * 150, [i % 10 == 0 for i in range(150)])
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=FACT_PARAMS)
    assert decision.failed_rules == ["non_inferiority/fact_hit"], decision.failed_rules
    assert decision.intervals["fact_hit"].estimate == pytest.approx(-0.1, abs=1e-9)


def test_fact_hit_is_paired_on_the_items_that_name_key_tokens_only() -> None:
    # items without key tokens score <NA>; the rest hit equally often on both sides
    hits: list[bool | None] = [None if i % 3 == 0 else i % 2 == 0 for i in range(150)]
    candidate, baseline = _fact_hits(hits, hits)
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=FACT_PARAMS)
    assert decision.passed, decision.failed_rules
    assert decision.intervals["fact_hit"].estimate == 0.0


def test_fact_hit_on_a_suite_without_key_tokens_fails_with_a_clear_reason() -> None:
    candidate, baseline = _fact_hits([None] * 20, [None] * 20)
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=FACT_PARAMS)
    assert decision.failed_rules == ["non_inferiority/fact_hit"]
    detail = next(rule.detail for rule in decision.rules if not rule.passed)
    assert "key_tokens" in detail and "noninferior_metrics" in detail, detail


@pytest.mark.parametrize(
    ("safety", "passed"),
    [
        ((0.90, 0.95), False),  # worse than the baseline and below the floor
        ((0.95, 0.95), True),  # as good as the baseline
        ((0.98, 1.00), True),  # worse than the baseline but at the floor (0.98)
        ((0.97, 1.00), False),  # worse than the baseline and below the floor
    ],
)
def test_safety_rule(safety: tuple[float, float], passed: bool) -> None:
    candidate, baseline = _scores(shift=0.08)
    decision = decide(candidate, baseline, OPS, OPS, safety=safety, params=PARAMS)
    assert (SAFETY not in decision.failed_rules) is passed, f"safety {safety}: failed {decision.failed_rules}"
    assert decision.passed is passed, (
        f"only safety varies, so the gate should follow it: {decision.failed_rules}"
    )


def test_missing_safety_results_fail_unless_not_required() -> None:
    candidate, baseline = _scores(shift=0.08)
    required = decide(candidate, baseline, OPS, OPS, safety=None, params=PARAMS)
    optional = decide(
        candidate, baseline, OPS, OPS, safety=None, params=PARAMS.model_copy(update={"require_safety": False})
    )
    assert required.failed_rules == [SAFETY], (
        f"no probes with require_safety should fail: {required.failed_rules}"
    )
    assert optional.passed, f"no probes without require_safety should pass: {optional.failed_rules}"


@pytest.mark.parametrize(
    ("candidate_ops", "failed"),
    [
        ({"latency_p95_ms": 960.0, "cost_per_query_usd": 0.0012}, []),  # exactly at 1.2x
        ({"latency_p95_ms": 1000.0, "cost_per_query_usd": 0.001}, [LATENCY_P95]),
        ({"latency_p95_ms": 800.0, "cost_per_query_usd": 0.002}, [COST_PER_QUERY]),
    ],
)
def test_latency_and_cost_ratios(candidate_ops: dict[str, float], failed: list[str]) -> None:
    candidate, baseline = _scores(shift=0.08)
    decision = decide(candidate, baseline, candidate_ops, OPS, safety=(1.0, 1.0), params=PARAMS)
    assert decision.failed_rules == failed, f"ops {candidate_ops}: failed {decision.failed_rules}"


def test_free_baseline_only_accepts_a_free_candidate() -> None:
    candidate, baseline = _scores(shift=0.08)
    free = {"latency_p95_ms": 800.0, "cost_per_query_usd": 0.0}
    paid = {"latency_p95_ms": 800.0, "cost_per_query_usd": 0.0001}
    assert decide(candidate, baseline, free, free, (1.0, 1.0), PARAMS).passed, "free vs free keeps the ratio"
    costly = decide(candidate, baseline, paid, free, (1.0, 1.0), PARAMS)
    assert costly.failed_rules == [COST_PER_QUERY], f"paid vs free should fail cost: {costly.failed_rules}"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, b: (c.iloc[1:], b), "different items"),
        (lambda c, b: (c.assign(item_id=c["item_id"].str.upper()), b), "different items"),
        (lambda c, b: (pd.concat([c, c.iloc[:1]]), b), "repeat item_id"),
        (lambda c, b: (c.drop(columns="faithfulness"), b), "lack column"),
        (lambda c, b: (c, b.drop(columns="item_id")), "lack column"),
        (lambda c, b: (c.assign(rougeL=np.nan), b), "missing scores"),
    ],
)
def test_misaligned_items_raise(mutate: Mutation, message: str) -> None:
    candidate, baseline = _scores(shift=0.08)
    candidate, baseline = mutate(candidate, baseline)
    with pytest.raises(GateInputError, match=message):
        decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=PARAMS)


def test_missing_ops_figure_raises() -> None:
    candidate, baseline = _scores(shift=0.08)
    with pytest.raises(GateInputError, match="cost_per_query_usd"):
        decide(candidate, baseline, {"latency_p95_ms": 1.0}, OPS, safety=(1.0, 1.0), params=PARAMS)


def test_align_items_pairs_by_item_id_not_position() -> None:
    candidate, baseline = _scores(shift=0.0)
    joined = align_items(candidate, baseline, ["rougeL"])
    expected = baseline.set_index("item_id")["rougeL"]
    paired = joined.set_index("item_id")["rougeL_baseline"]
    assert paired.equals(expected.loc[paired.index]), "baseline scores must stay with their item ids"


def test_params_reject_primary_metric_among_noninferior_metrics() -> None:
    with pytest.raises(ValueError, match="primary_metric"):
        EvaluateParams(primary_metric="rougeL", noninferior_metrics=("rougeL",))


# --- artifact, metrics, plots -----------------------------------------------------------------


def test_markdown_names_the_failing_rule() -> None:
    # given a candidate that fails safety
    candidate, baseline = _scores(shift=0.08)
    decision = decide(candidate, baseline, OPS, OPS, safety=(0.5, 0.9), params=PARAMS)
    # when rendered for a Prefect artifact
    text = decision.markdown()
    # then the table marks safety failed and the bold decision line names it
    assert "| safety |" in text and "**FAIL**" in text, f"safety row should be marked failed:\n{text}"
    assert "**Decision: FAIL (safety)" in text, f"decision line should name the failing rule:\n{text}"
    assert "| superiority |" in text and "[+" in text, f"superiority row should show its CI:\n{text}"


def test_markdown_of_a_pass_says_pass() -> None:
    candidate, baseline = _scores(shift=0.08)
    text = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=PARAMS).markdown()
    assert "**Decision: PASS" in text, f"a passing gate should say so:\n{text}"


def test_metrics_are_flat_floats_for_mlflow() -> None:
    candidate, baseline = _scores(shift=0.0)
    metrics = decide(candidate, baseline, OPS, OPS, safety=None, params=PARAMS).metrics()
    assert all(type(v) is float for v in metrics.values()), f"non-float metric values: {metrics}"
    assert metrics["gate/passed"] == 0.0, "failed gate logs passed=0"
    assert metrics["gate/rule/superiority/passed"] == 0.0, "superiority failed"
    assert "gate/diff/rougeL/low" in metrics and "gate/win_rate/high" in metrics, (
        f"intervals missing: {metrics}"
    )
    assert "gate/rule/safety/value" not in metrics, "a rule without a value logs no value"


def test_plots_write_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    candidate, baseline = _scores(shift=0.08)
    decision = decide(candidate, baseline, OPS, OPS, safety=(1.0, 1.0), params=PARAMS)
    dist = score_distribution_plot(candidate, baseline, "rougeL", tmp_path / "plots" / "rougeL.png")
    cis = ci_plot(decision, tmp_path / "ci.png")
    for path in (dist, cis):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
