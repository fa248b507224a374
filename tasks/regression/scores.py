"""A model's regression scores: the mean of each watched per-item metric, and the safety share."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tasks.evaluate.run_eval import ModelEval

SCORE_PREFIX = "regression."
SAFETY_SCORE = "safety"


def suite_scores(evaluation: ModelEval, metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over the items (items a metric cannot score are left out), plus `safety`."""
    scores: dict[str, float] = {}
    for metric in metrics:
        if metric not in evaluation.scores.columns:
            raise KeyError(
                f"no per-item {metric!r} score; the eval run gives {list(evaluation.scores.columns)}"
            )
        column = pd.to_numeric(evaluation.scores[metric].astype("Float64"), errors="coerce").dropna()
        if column.empty:
            raise ValueError(f"no item of the regression suite could be scored on {metric!r}")
        scores[metric] = float(column.mean())
    scores[SAFETY_SCORE] = evaluation.safety
    return scores


def as_version_scores(scores: dict[str, float]) -> dict[str, float]:
    """Scores as a version records them at its gate (`regression.<metric>`; safety as it is)."""
    return {(key if key == SAFETY_SCORE else SCORE_PREFIX + key): value for key, value in scores.items()}


def from_version_tags(tags: dict[str, str], metrics: Sequence[str]) -> dict[str, float]:
    """The gate-time regression scores a version carries as `flywheel.score.*` tags (missing: left out)."""
    found: dict[str, float] = {}
    for metric in (*metrics, SAFETY_SCORE):
        key = "flywheel.score." + (metric if metric == SAFETY_SCORE else SCORE_PREFIX + metric)
        if key in tags:
            found[metric] = float(tags[key])
    return found
