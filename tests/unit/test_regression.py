"""Regression checks: scores against the gate's and the recent runs', and the scores themselves."""

from __future__ import annotations

import pandas as pd
import pytest

from flywheel.settings import RegressionParams
from tasks.evaluate.run_eval import ModelEval
from tasks.regression import (
    alerts,
    as_version_scores,
    checks_markdown,
    compare_scores,
    from_version_tags,
    suite_scores,
)

PARAMS = RegressionParams(
    metrics=("rougeL", "fact_hit"), max_relative_drop=0.05, max_safety_drop=0.0, history_runs=3
)
GATE = {"rougeL": 0.60, "fact_hit": 0.70, "safety": 1.0}


def _fired(checks: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]  # list of Check
    return {(c.metric, c.reference) for c in alerts(checks)}


def test_an_unchanged_version_trips_nothing() -> None:
    # given today's scores equal to the gate's and to every earlier run
    checks = compare_scores(dict(GATE), GATE, [dict(GATE)] * 4, PARAMS)
    # then no check alerts, and every metric was compared with both references
    assert not _fired(checks), f"an unchanged version alerted: {_fired(checks)}"
    assert len(checks) == 2 * 3, f"two references for rougeL, fact_hit and safety: {checks}"


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        ({"rougeL": 0.55}, {("rougeL", "gate"), ("rougeL", "recent runs")}),  # -8.3%: beyond 5%
        ({"rougeL": 0.58}, set()),  # -3.3%: within 5%
        ({"fact_hit": 0.60}, {("fact_hit", "gate"), ("fact_hit", "recent runs")}),
        ({"safety": 0.96}, {("safety", "gate"), ("safety", "recent runs")}),  # any safety drop
    ],
)
def test_a_drop_beyond_its_threshold_trips_exactly_that_metric(
    today: dict[str, float], expected: set[tuple[str, str]]
) -> None:
    checks = compare_scores({**GATE, **today}, GATE, [dict(GATE)] * 3, PARAMS)
    assert _fired(checks) == expected, f"{today}: fired {_fired(checks)}, expected {expected}"


def test_recent_runs_are_a_median_of_the_last_n() -> None:
    # given a version that scored 0.40 long ago and 0.60 in its last three runs (history_runs=3)
    history = [{**GATE, "rougeL": 0.40}] * 5 + [dict(GATE)] * 3
    # when today's score is 0.50 and the gate's reference is missing
    checks = compare_scores({**GATE, "rougeL": 0.50}, {}, history, PARAMS)
    by = {(c.metric, c.reference): c for c in checks}
    # then the recent-runs reference is the median of the last three (0.60) and alerts; the gate has none
    assert by[("rougeL", "recent runs")].reference_value == pytest.approx(0.60), by[("rougeL", "recent runs")]
    assert by[("rougeL", "recent runs")].status == "alert", "0.50 is below 95% of 0.60"
    assert by[("rougeL", "gate")].status == "no_reference", "no gate score is no_reference, never a pass"


def test_a_first_run_has_no_recent_reference() -> None:
    checks = compare_scores(dict(GATE), GATE, [], PARAMS)
    statuses = {(c.metric, c.reference): c.status for c in checks}
    assert statuses[("rougeL", "recent runs")] == "no_reference", statuses
    assert statuses[("rougeL", "gate")] == "ok", statuses


def test_a_missing_score_is_an_error_not_a_pass() -> None:
    with pytest.raises(KeyError, match="fact_hit"):
        compare_scores({"rougeL": 0.6, "safety": 1.0}, GATE, [], PARAMS)


def test_markdown_lists_alerts_first_with_the_verdict() -> None:
    checks = compare_scores({**GATE, "rougeL": 0.30}, GATE, [], PARAMS)
    text = checks_markdown(checks, "Regression check of m v1")
    assert "**REGRESSION**: rougeL vs gate" in text, text
    table = [
        line for line in text.splitlines() if line.startswith("| rougeL") or line.startswith("| fact_hit")
    ]
    assert table[0].startswith("| rougeL | 0.3000 | gate | 0.6000 | 0.5700 | -50.0% | alert"), table


def test_suite_scores_average_each_metric_and_skip_unscorable_items() -> None:
    # given per-item scores where one item has no key tokens (fact_hit <NA>) and 2 of 3 probes resisted
    scores = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "rougeL": [0.2, 0.4, 0.6],
            "fact_hit": pd.array([True, None, False], "boolean"),
        }
    )
    probes = pd.DataFrame({"id": ["p1", "p2", "p3"], "resisted": [True, True, False]})
    evaluation = ModelEval(scores, {}, probes)
    # then the means leave the unscorable item out and safety is the resisted share
    got = suite_scores(evaluation, ("rougeL", "fact_hit"))
    assert got == pytest.approx({"rougeL": 0.4, "fact_hit": 0.5, "safety": 2 / 3}), got


def test_version_tags_round_trip() -> None:
    # given the scores a gate records on a version (flywheel.score.* tags, as register_candidate writes them)
    recorded = as_version_scores({"rougeL": 0.5, "fact_hit": 0.25, "safety": 1.0})
    tags = {f"flywheel.score.{key}": f"{value:.6g}" for key, value in recorded.items()}
    # then the regression run reads back exactly the watched metrics
    assert from_version_tags(tags, ("rougeL", "fact_hit")) == {"rougeL": 0.5, "fact_hit": 0.25, "safety": 1.0}
    assert "flywheel.score.safety" in tags and "flywheel.score.regression.rougeL" in tags, tags
