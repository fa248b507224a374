"""Regression checks: today's scores of the served version against its gate scores and its recent runs.

Two references per metric, as a person on call would look at them: the score
the version had when it passed its gate (the promise made at promotion), and
the median of its last few regression runs (what it did recently). Greedy
decoding of an unchanged version reproduces its answers, so an unchanged
version sits on both references and a swapped or corrupted one falls off.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from flywheel.settings import RegressionParams

SAFETY = "safety"
Status = Literal["ok", "alert", "no_reference"]
Reference = Literal["gate", "recent runs"]


@dataclass(frozen=True)
class Check:
    """One metric against one reference."""

    metric: str
    value: float
    reference: Reference
    reference_value: float | None
    floor: float | None  # below this the check alerts
    status: Status

    @property
    def change(self) -> float | None:
        """Relative change from the reference (None without one, or from zero)."""
        if self.reference_value is None or self.reference_value == 0:
            return None
        return self.value / self.reference_value - 1.0


def floor_for(metric: str, reference: float, params: RegressionParams) -> float:
    """The lowest acceptable value: a relative drop for quality metrics, an absolute one for safety."""
    if metric == SAFETY:
        return reference - params.max_safety_drop
    return reference * (1.0 - params.max_relative_drop)


def _check(
    metric: str, value: float, reference: Reference, ref: float | None, params: RegressionParams
) -> Check:
    if ref is None:
        return Check(metric, value, reference, None, None, "no_reference")
    floor = floor_for(metric, ref, params)
    # a tolerance for float noise: the same answers scored twice must never alert
    status: Status = "alert" if value < floor - 1e-9 else "ok"
    return Check(metric, value, reference, ref, floor, status)


def compare_scores(
    current: Mapping[str, float],
    gate: Mapping[str, float],
    history: Sequence[Mapping[str, float]],
    params: RegressionParams,
) -> list[Check]:
    """Checks of every watched metric (and safety) against the gate scores and the recent runs' median.

    `history` is the version's earlier regression runs, oldest first; only the
    last `params.history_runs` count. A metric missing from a reference gives
    a `no_reference` check rather than a silent pass.
    """
    checks: list[Check] = []
    recent = list(history)[-params.history_runs :]
    for metric in (*params.metrics, SAFETY):
        if metric not in current:
            raise KeyError(f"the regression run produced no {metric!r} score")
        value = float(current[metric])
        checks.append(_check(metric, value, "gate", gate.get(metric), params))
        past = [float(run[metric]) for run in recent if metric in run]
        checks.append(_check(metric, value, "recent runs", statistics.median(past) if past else None, params))
    return checks


def alerts(checks: Sequence[Check]) -> list[Check]:
    """The checks that alert."""
    return [check for check in checks if check.status == "alert"]


def checks_markdown(checks: Sequence[Check], title: str) -> str:
    """A table of the checks, alerts first, for the Prefect artifact and the MLflow run."""
    firing = alerts(checks)
    verdict = (
        f"**REGRESSION**: {', '.join(sorted({c.metric + ' vs ' + c.reference for c in firing}))}"
        if firing
        else "**no regression**"
    )
    lines = [
        f"# {title}",
        "",
        verdict,
        "",
        "| metric | value | reference | reference value | floor | change | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for check in sorted(checks, key=lambda c: (c.status != "alert", c.metric, c.reference)):
        ref = "-" if check.reference_value is None else f"{check.reference_value:.4f}"
        floor = "-" if check.floor is None else f"{check.floor:.4f}"
        change = "-" if check.change is None else f"{check.change:+.1%}"
        lines.append(
            f"| {check.metric} | {check.value:.4f} | {check.reference} | {ref} | {floor} | {change} | "
            f"{check.status} |"
        )
    return "\n".join(lines) + "\n"
