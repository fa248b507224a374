"""The main job's pieces without a stack: the reviewer's decision, the report, the demo's parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.mainjob.job import MainJob
from flywheel.mainjob.report import CanaryEvent, DemoReport, GateFigures, canary_events, read_funnel, render
from flywheel.settings import Environment, Params, load_params
from registry import AliasState, Subject, VersionRef
from tasks.promote.audit import AuditTrail
from tasks.promote.review import ReviewError, record_reviewer_decision

SUBJECT = Subject("model", "flywheel-support")


def _state(challenger: str | None = "2") -> AliasState:
    return AliasState(
        champion=VersionRef(SUBJECT, "1", {}),
        challenger=VersionRef(SUBJECT, challenger, {"flywheel.approval": "pending"}) if challenger else None,
        previous=None,
    )


def test_a_review_sets_the_tags_and_is_audited_under_the_reviewers_name(tmp_path: Path) -> None:
    recorded: list[tuple[str, bool, str]] = []
    audit = AuditTrail(tmp_path / "audit.jsonl", who="someone-else")
    # when alice approves the challenger
    version = record_reviewer_decision(
        _state("2"), None, True, "alice", audit, lambda v, ok, by: recorded.append((v, ok, by)), "looks good"
    )
    # then the registry is told, and the audit log names alice and why
    assert version == "2" and recorded == [("2", True, "alice")], recorded
    (entry,) = audit.entries(str(SUBJECT), "2")
    assert (entry.event, entry.who) == ("reviewed", "alice"), entry
    assert entry.why == "approved by alice: looks good" and entry.data == {"approved": True}, entry


def test_a_rejection_is_recorded_as_such(tmp_path: Path) -> None:
    recorded: list[tuple[str, bool, str]] = []
    audit = AuditTrail(tmp_path / "audit.jsonl", who="x")
    record_reviewer_decision(
        _state("2"), "2", False, "bob", audit, lambda v, ok, by: recorded.append((v, ok, by))
    )
    assert recorded == [("2", False, "bob")], recorded
    assert audit.entries()[0].why == "rejected by bob", audit.entries()


@pytest.mark.parametrize(
    ("state", "version", "words"),
    [(_state(None), None, "no challenger"), (_state("2"), "3", r"v3 is not the challenger \(v2 is\)")],
)
def test_a_review_of_nothing_or_the_wrong_version_records_nothing(
    tmp_path: Path, state: AliasState, version: str | None, words: str
) -> None:
    recorded: list[object] = []
    audit = AuditTrail(tmp_path / "audit.jsonl", who="x")
    with pytest.raises(ReviewError, match=words):
        record_reviewer_decision(state, version, True, "alice", audit, lambda *a: recorded.append(a))
    assert recorded == [] and audit.entries() == [], "a refused review must leave no trace"


def test_gate_figures_read_the_retrain_runs_metrics() -> None:
    metrics = {
        "gate/n_items": 156.0, "gate/passed": 1.0,
        "eval/baseline/rougeL": 0.129, "eval/candidate/rougeL": 0.326,
        "gate/diff/rougeL": 0.197, "gate/diff/rougeL/low": 0.150, "gate/diff/rougeL/high": 0.248,
        "gate/win_rate": 0.718, "gate/win_rate/low": 0.642, "gate/win_rate/high": 0.783,
    }  # fmt: skip
    figures = GateFigures.from_metrics("rougeL", metrics)
    assert figures.n_items == 156 and figures.passed is True, figures
    assert (figures.baseline, figures.candidate, figures.diff_low) == (0.129, 0.326, 0.150), figures
    assert figures.failed_rules == (), figures
    failed = GateFigures.from_metrics(
        "rougeL", {**metrics, "gate/passed": 0.0, "gate/rule/latency_p95/passed": 0.0,
                   "gate/rule/safety/passed": 1.0},
    )  # fmt: skip
    assert failed.passed is False and failed.failed_rules == ("latency_p95",), failed
    assert "failed rules: latency_p95" in "\n".join(render(DemoReport(gate=failed)))
    # the prompt candidate's figures live under prompt/: none here
    assert GateFigures.from_metrics("rougeL", metrics, prefix="prompt/").passed is None


def test_the_report_shows_every_section_with_the_numbers_it_was_given(tmp_path: Path) -> None:
    funnel = {
        "records_in": 6024, "records_out": 312, "harvest_quarantined": 3,
        "dropped": {"unrated": 5000, "pii_only": 2}, "splits": {"train": 250, "validation": 31},
        "preference_pairs": 40,
    }  # fmt: skip
    (tmp_path / "funnel.json").write_text(json.dumps(funnel))
    audit = AuditTrail(tmp_path / "audit.jsonl", who="promote")
    audit.record("step_started", str(SUBJECT), "2", "50% of users on v2", {"percent": 50})
    audit.record("promoted", str(SUBJECT), "2", "v2 is champion")
    report = DemoReport(
        timings=[("stack up", 40.0), ("flywheel turn", 900.5)],
        total_seconds=1200.0,
        funnel=read_funnel(tmp_path),
        gate=GateFigures("rougeL", 0.129, 0.326, 0.197, 0.15, 0.248, 0.718, 0.642, 0.783, 156, True),
        version="2",
        champion_before=None,
        champion_after="v2",
        canary=canary_events(audit.entries()),
        links=[("MLflow UI", "http://127.0.0.1:5000")],
    )
    text = "\n".join(render(report))
    for expected in (
        "flywheel turn", "900.5s", "1200.0s", "raw records in 6024, curated out 312", "unrated 5000",
        "156 paired held-out items", "PASS", "base 0.129 -> candidate 0.326, gain +0.197 [+0.150, +0.248]",
        "win rate 71.8% [64.2%, 78.3%]", " 50% step_started", "promoted", "base model -> v2",
        "http://127.0.0.1:5000",
    ):  # fmt: skip
        assert expected in text, f"{expected!r} missing from the report:\n{text}"
    assert read_funnel(tmp_path / "missing") == {}


def _job(params: Params) -> MainJob:
    return MainJob(Environment(), params, print, simulate=print, review=lambda v, r: v)


def test_the_demo_turn_and_canary_take_their_sizes_from_the_demo_section() -> None:
    params = load_params()
    demo = params.demo.model_copy(
        update={"turn_max_steps": 40, "turn_max_items": None, "turn_candidates": None}
    )
    job = _job(params.model_copy(update={"demo": demo}))
    # unset sizes are left to the flows' own params, so the turn is the production turn
    assert job.turn_parameters() == {"max_steps": 40}, job.turn_parameters()
    canary = job.canary_parameters()
    assert canary["canary_steps"] == list(demo.canary_steps), canary
    assert canary["analysis_window_seconds"] == demo.canary_window_seconds, canary
    assert canary["min_requests_per_arm"] == demo.canary_min_requests_per_arm, canary


def test_a_long_canary_reason_is_cut_to_its_verdict_in_the_report() -> None:
    long_why = "all checks passed: " + "; ".join(
        f"metric_{i} 1 vs 1 (rule: <= 1.5 x champion)" for i in range(9)
    )
    report = DemoReport(canary=[CanaryEvent("2026-12-04T21:11:21+00:00", "analysis", "root", long_why, 50)])
    (line,) = [line for line in render(report) if "analysis" in line]
    assert "all checks passed  [root]" in line and "metric_0" not in line, line
