"""The eval gate: paired statistics on per-item scores, then a pass/fail decision with its reasons.

Pure numpy/pandas: no models, no MLflow, no Prefect. The evaluate task scores the candidate
and the baseline (champion) on the same items, then calls `decide`; the result renders as a
Prefect markdown artifact (`GateDecision.markdown`) and as flat MLflow metrics
(`GateDecision.metrics`), with two optional plots.

Rules, all read from `EvaluateParams`:

- superiority: the primary metric's mean paired difference (candidate - baseline) has a CI
  lower bound above `min_improvement`;
- non-inferiority: each of `noninferior_metrics` has a CI lower bound above
  `-noninferiority_margin`;
- safety: the candidate resists at least the baseline's share of safety probes, or at least
  `safety_floor` of them;
- latency_p95 / cost_per_query: the candidate's value is at most `max_*_ratio` times the
  baseline's.

The CIs are two-sided at `confidence`; a rule reads only the lower bound, so each is a one-sided
test at level (1 - confidence) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import pandas as pd

from flywheel.settings import EvaluateParams

ITEM_ID = "item_id"
OPS_LATENCY_P95 = "latency_p95_ms"
OPS_COST_PER_QUERY = "cost_per_query_usd"

SUPERIORITY = "superiority"
NON_INFERIORITY = "non_inferiority"
SAFETY = "safety"
LATENCY_P95 = "latency_p95"
COST_PER_QUERY = "cost_per_query"

# Bootstrap resamples are drawn in blocks so that memory stays near this many indices.
_BLOCK_ELEMENTS = 2_000_000


class GateInputError(ValueError):
    """The scores or ops figures given to the gate cannot be compared."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


@dataclass(frozen=True)
class RuleResult:
    """One gate rule: the measured value, the threshold it was held to, and whether it passed."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    interval: Interval | None = None


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with every rule and the intervals behind them."""

    passed: bool
    rules: list[RuleResult]
    intervals: dict[str, Interval]
    win_rate: Interval
    n_items: int
    primary_metric: str
    confidence: float
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def failed_rules(self) -> list[str]:
        """Names of the rules that failed, in rule order."""
        return [rule.name for rule in self.rules if not rule.passed]

    def markdown(self) -> str:
        """A Prefect artifact: one table row per rule, then a bold decision line."""
        level = f"{self.confidence:.0%}"
        lines = [
            f"## Eval gate: {self.n_items} paired items, {level} bootstrap CIs",
            "",
            f"| rule | value ({level} CI) | threshold | result |",
            "|---|---|---|---|",
        ]
        for rule in self.rules:
            lines.append(
                f"| {rule.name} | {_format_value(rule)} | {_format_threshold(rule)} "
                f"| {'pass' if rule.passed else '**FAIL**'} |"
            )
        lines += [
            "",
            f"Win rate on {self.primary_metric} (ties count half): {self.win_rate.estimate:.1%} "
            f"[{self.win_rate.low:.1%}, {self.win_rate.high:.1%}]",
            "",
        ]
        if self.passed:
            lines.append("**Decision: PASS, the candidate may be promoted.**")
        else:
            lines.append(
                f"**Decision: FAIL ({', '.join(self.failed_rules)}), the candidate stays unpromoted.**"
            )
        details = [f"- {rule.name}: {rule.detail}" for rule in self.rules]
        return "\n".join([*lines, "", *details, ""])

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: the decision, each interval, and each rule's pass, value and threshold."""
        out: dict[str, float] = {"gate/passed": float(self.passed), "gate/n_items": float(self.n_items)}
        for metric, interval in self.intervals.items():
            out[f"gate/diff/{metric}"] = interval.estimate
            out[f"gate/diff/{metric}/low"] = interval.low
            out[f"gate/diff/{metric}/high"] = interval.high
        out["gate/win_rate"] = self.win_rate.estimate
        out["gate/win_rate/low"] = self.win_rate.low
        out["gate/win_rate/high"] = self.win_rate.high
        for rule in self.rules:
            out[f"gate/rule/{rule.name}/passed"] = float(rule.passed)
            # MLflow rejects non-finite values poorly; a skipped rule simply has no value
            if rule.value is not None and math.isfinite(rule.value):
                out[f"gate/rule/{rule.name}/value"] = rule.value
            if rule.threshold is not None:
                out[f"gate/rule/{rule.name}/threshold"] = rule.threshold
        return out


def _format_value(rule: RuleResult) -> str:
    if rule.interval is not None:
        return str(rule.interval)
    if rule.value is None:
        return "n/a"
    return f"{rule.value:.4f}"


def _format_threshold(rule: RuleResult) -> str:
    if rule.threshold is None:
        return "n/a"
    if rule.name in (LATENCY_P95, COST_PER_QUERY):
        return f"<= {rule.threshold:.2f}x"
    if rule.name == SAFETY:
        return f">= {rule.threshold:.4f}"
    return f"> {rule.threshold:+.4f}"


def _paired_arrays(
    candidate: npt.ArrayLike, baseline: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    if cand.ndim != 1 or cand.shape != base.shape:
        raise GateInputError(
            f"paired scores must be 1-D and the same length; got {cand.shape} and {base.shape}"
        )
    if cand.size == 0:
        raise GateInputError("paired scores are empty")
    if not (np.isfinite(cand).all() and np.isfinite(base).all()):
        raise GateInputError("paired scores contain NaN or infinite values")
    return cand, base


def paired_bootstrap(
    candidate: npt.ArrayLike, baseline: npt.ArrayLike, samples: int, confidence: float, seed: int
) -> Interval:
    """Mean paired difference (candidate - baseline) with its percentile bootstrap CI.

    Items are resampled with replacement as pairs, so the CI reflects that both systems saw the
    same items (much tighter than comparing two independent means).
    """
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    cand, base = _paired_arrays(candidate, baseline)
    diffs = cand - base
    n = diffs.size
    rng = np.random.default_rng(seed)
    means = np.empty(samples, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, samples, block):
        stop = min(samples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return Interval(float(diffs.mean()), float(low), float(high))


def win_rate(
    candidate: npt.ArrayLike, baseline: npt.ArrayLike, tie_margin: float = 0.0, confidence: float = 0.95
) -> Interval:
    """Share of items where the candidate scores higher (ties count half), with a Wilson score CI.

    A pair is a tie when the scores differ by at most `tie_margin`. The Wilson interval treats
    each item as a Bernoulli trial; a half-counted tie has less variance than that, so with ties
    the interval is slightly conservative (wider), never too narrow. It needs no seed.
    """
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    cand, base = _paired_arrays(candidate, baseline)
    diffs = cand - base
    wins = np.count_nonzero(diffs > tie_margin)
    ties = np.count_nonzero(np.abs(diffs) <= tie_margin)
    n = diffs.size
    share = (wins + 0.5 * ties) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1.0 + z * z / n
    centre = (share + z * z / (2 * n)) / denom
    half = z * math.sqrt(share * (1.0 - share) / n + z * z / (4 * n * n)) / denom
    return Interval(float(share), float(max(0.0, centre - half)), float(min(1.0, centre + half)))


_SIDES = ("candidate", "baseline")


def _scored_pairs(joined: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The metric's paired scores on the items both sides have one for, as floats."""
    cand, base = (f"{metric}_{side}" for side in _SIDES)
    pairs = joined[[cand, base]].dropna()
    return pairs[cand].to_numpy(dtype=np.float64), pairs[base].to_numpy(dtype=np.float64)


def align_items(
    candidate: pd.DataFrame, baseline: pd.DataFrame, metrics: Sequence[str], optional: Sequence[str] = ()
) -> pd.DataFrame:
    """Join the two score frames on `item_id`; columns `<metric>_candidate` and `<metric>_baseline`.

    Raises GateInputError when a frame lacks `item_id` or a metric, repeats an item, has missing
    scores, or when the two frames do not score exactly the same items. Metrics in `optional`
    may be missing on some items (fact_hit where an item names no key tokens).
    """
    for label, frame in (("candidate", candidate), ("baseline", baseline)):
        missing = [col for col in (ITEM_ID, *metrics) if col not in frame.columns]
        if missing:
            raise GateInputError(f"{label} scores lack column(s) {missing}; have {list(frame.columns)}")
        repeated = frame[ITEM_ID][frame[ITEM_ID].duplicated()].unique()
        if len(repeated):
            raise GateInputError(f"{label} scores repeat item_id(s) {_sample(repeated)}")
    cand_ids, base_ids = set(candidate[ITEM_ID]), set(baseline[ITEM_ID])
    if cand_ids != base_ids:
        only_cand, only_base = cand_ids - base_ids, base_ids - cand_ids
        raise GateInputError(
            "candidate and baseline were scored on different items: "
            f"{len(only_cand)} only in candidate {_sample(only_cand)}, "
            f"{len(only_base)} only in baseline {_sample(only_base)}"
        )
    cols = [ITEM_ID, *metrics]
    joined = candidate[cols].merge(
        baseline[cols], on=ITEM_ID, suffixes=("_candidate", "_baseline"), validate="one_to_one"
    )
    scored = joined.drop(columns=[ITEM_ID, *(f"{m}_{side}" for m in optional for side in _SIDES)])
    if scored.isna().any().any():
        bad = scored.columns[scored.isna().any()].tolist()
        raise GateInputError(f"missing scores in {bad}")
    return joined.sort_values(ITEM_ID, kind="stable").reset_index(drop=True)


def _sample(values: Iterable[object], limit: int = 5) -> list[object]:
    return sorted(values, key=str)[:limit]


def decide(
    candidate: pd.DataFrame,
    baseline: pd.DataFrame,
    candidate_ops: dict[str, float],
    baseline_ops: dict[str, float],
    safety: tuple[float, float] | None,
    params: EvaluateParams,
) -> GateDecision:
    """Apply every gate rule to paired per-item scores and ops figures.

    Args:
        candidate: per-item scores of the candidate, an `item_id` column plus one per metric.
        baseline: the same for the baseline (champion), on exactly the same items.
        candidate_ops: `latency_p95_ms` and `cost_per_query_usd` measured for the candidate.
        baseline_ops: the same for the baseline.
        safety: (candidate, baseline) share of safety probes resisted, in [0, 1]; None when no
            probes were run (fails the gate unless `params.require_safety` is off).
        params: the `evaluate` section of params.yaml.
    """
    metrics = [params.primary_metric, *params.noninferior_metrics]
    joined = align_items(candidate, baseline, metrics, optional=params.noninferior_metrics)
    intervals = {}
    for metric in metrics:
        cand, base = _scored_pairs(joined, metric)
        # A non-inferior metric no item has (fact_hit without key tokens) fails its rule below;
        # an empty primary is an input error (paired_bootstrap raises).
        if len(cand) or metric == params.primary_metric:
            intervals[metric] = paired_bootstrap(
                cand, base, samples=params.bootstrap_samples, confidence=params.confidence, seed=params.seed
            )
    primary = params.primary_metric
    wins = win_rate(
        joined[f"{primary}_candidate"].to_numpy(),
        joined[f"{primary}_baseline"].to_numpy(),
        tie_margin=params.win_tie_margin,
        confidence=params.confidence,
    )
    rules = [_superiority(primary, intervals[primary], params.min_improvement)]
    rules += [
        _non_inferiority(metric, intervals.get(metric), params.noninferiority_margin)
        for metric in params.noninferior_metrics
    ]
    rules.append(_safety(safety, params.safety_floor, params.require_safety))
    rules.append(
        _ratio_rule(LATENCY_P95, OPS_LATENCY_P95, candidate_ops, baseline_ops, params.max_latency_ratio)
    )
    rules.append(
        _ratio_rule(COST_PER_QUERY, OPS_COST_PER_QUERY, candidate_ops, baseline_ops, params.max_cost_ratio)
    )
    thresholds = {primary: params.min_improvement}
    thresholds.update({metric: -params.noninferiority_margin for metric in params.noninferior_metrics})
    return GateDecision(
        passed=all(rule.passed for rule in rules),
        rules=rules,
        intervals=intervals,
        win_rate=wins,
        n_items=len(joined),
        primary_metric=primary,
        confidence=params.confidence,
        thresholds=thresholds,
    )


def _superiority(metric: str, interval: Interval, margin: float) -> RuleResult:
    passed = interval.low > margin
    verdict = "exceeds" if passed else "does not exceed"
    return RuleResult(
        name=SUPERIORITY,
        passed=passed,
        value=interval.estimate,
        threshold=margin,
        detail=f"{metric}: CI lower bound {interval.low:+.4f} {verdict} the superiority margin {margin:+.4f}",
        interval=interval,
    )


def _non_inferiority(metric: str, interval: Interval | None, margin: float) -> RuleResult:
    threshold = -margin
    if interval is None:
        return RuleResult(
            name=f"{NON_INFERIORITY}/{metric}",
            passed=False,
            value=None,
            threshold=threshold,
            detail=f"{metric}: no eval item has a score (e.g. fact_hit needs key_tokens); "
            "remove it from evaluate.noninferior_metrics or score it",
        )
    passed = interval.low > threshold
    verdict = "is above" if passed else "is not above"
    return RuleResult(
        name=f"{NON_INFERIORITY}/{metric}",
        passed=passed,
        value=interval.estimate,
        threshold=threshold,
        detail=f"{metric}: CI lower bound {interval.low:+.4f} {verdict} -margin {threshold:+.4f}",
        interval=interval,
    )


def _safety(safety: tuple[float, float] | None, floor: float, required: bool) -> RuleResult:
    if safety is None:
        return RuleResult(
            name=SAFETY,
            passed=not required,
            value=None,
            threshold=None,
            detail="no safety probe results" + (" (required)" if required else " (not required, skipped)"),
        )
    cand, base = safety
    for label, share in (("candidate", cand), ("baseline", base)):
        if not 0.0 <= share <= 1.0:
            raise GateInputError(f"{label} safety share must be in [0, 1], got {share}")
    threshold = min(base, floor)
    passed = cand >= threshold
    return RuleResult(
        name=SAFETY,
        passed=passed,
        value=cand,
        threshold=threshold,
        detail=(
            f"candidate resisted {cand:.1%} of probes, baseline {base:.1%}, floor {floor:.1%}: "
            + ("not worse" if passed else "worse than the baseline and below the floor")
        ),
    )


def _ratio_rule(
    name: str, key: str, candidate_ops: dict[str, float], baseline_ops: dict[str, float], max_ratio: float
) -> RuleResult:
    for label, ops in (("candidate", candidate_ops), ("baseline", baseline_ops)):
        if key not in ops:
            raise GateInputError(f"{label} ops figures lack {key!r}; have {sorted(ops)}")
        if not (math.isfinite(ops[key]) and ops[key] >= 0):
            raise GateInputError(f"{label} {key} must be finite and >= 0, got {ops[key]}")
    cand, base = float(candidate_ops[key]), float(baseline_ops[key])
    # a free or instant baseline: only an equally free candidate keeps the ratio
    ratio = cand / base if base > 0 else (1.0 if cand == 0 else math.inf)
    passed = ratio <= max_ratio
    return RuleResult(
        name=name,
        passed=passed,
        value=ratio,
        threshold=max_ratio,
        detail=f"{key}: candidate {cand:.4g} vs baseline {base:.4g} = {ratio:.2f}x (max {max_ratio:.2f}x)",
    )


def score_distribution_plot(candidate: pd.DataFrame, baseline: pd.DataFrame, metric: str, path: Path) -> Path:
    """Histograms of both systems' per-item scores and of their paired differences, as a PNG."""
    import matplotlib  # heavy and only needed when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    joined = align_items(candidate, baseline, [metric])
    cand = joined[f"{metric}_candidate"].to_numpy()
    base = joined[f"{metric}_baseline"].to_numpy()
    diffs = cand - base
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        bins = np.histogram_bin_edges(np.concatenate([cand, base]), bins="auto")
        left.hist(base, bins=bins, alpha=0.6, label=f"baseline (mean {base.mean():.3f})")
        left.hist(cand, bins=bins, alpha=0.6, label=f"candidate (mean {cand.mean():.3f})")
        left.set(title=f"{metric} per item", xlabel=metric, ylabel="items")
        left.legend()
        right.hist(diffs, bins="auto", color="grey")
        right.axvline(0.0, color="black", linewidth=1)
        right.axvline(diffs.mean(), color="tab:red", linestyle="--", label=f"mean {diffs.mean():+.3f}")
        right.set(title="paired difference (candidate - baseline)", xlabel="difference", ylabel="items")
        right.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def ci_plot(decision: GateDecision, path: Path) -> Path:
    """Each metric's mean paired difference with its CI and the threshold its rule holds it to, as a PNG."""
    import matplotlib  # heavy and only needed when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    names = list(decision.intervals)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(names)))
    try:
        for row, metric in enumerate(names):
            interval = decision.intervals[metric]
            threshold = decision.thresholds.get(metric, 0.0)
            colour = "tab:green" if interval.low > threshold else "tab:red"
            ax.errorbar(
                interval.estimate,
                row,
                xerr=[[interval.estimate - interval.low], [interval.high - interval.estimate]],
                fmt="o",
                color=colour,
                capsize=4,
            )
            ax.plot([threshold, threshold], [row - 0.3, row + 0.3], color="black", linestyle="--")
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.set(
            xlabel=f"candidate - baseline ({decision.confidence:.0%} CI; dashed: threshold)",
            title=f"Eval gate: {'PASS' if decision.passed else 'FAIL'}",
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
