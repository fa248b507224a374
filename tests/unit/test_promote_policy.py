"""Approval policy: every way a challenger is refused, and the one way it is approved."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.settings import PromoteParams
from tasks.promote.policy import Approved, Refusal, canary_running, check_approval

PARAMS = PromoteParams()


@dataclass(frozen=True)
class Version:
    """A model version as the policy sees it."""

    version: str
    tags: Mapping[str, str] = field(default_factory=dict)


def approved(version: str = "3", **overrides: str) -> Version:
    """A gate-passed challenger produced by `trainer`, approved by `alice`, with tag overrides."""
    tags = {
        "flywheel.gate": "passed",
        "flywheel.approval": "approved",
        "flywheel.approved_by": "alice",
        "flywheel.produced_by": "trainer",
    }
    tags.update({f"flywheel.{key}": value for key, value in overrides.items()})
    return Version(version, {key: value for key, value in tags.items() if value != "<unset>"})


def test_an_approved_newer_challenger_is_approved_with_its_approver() -> None:
    verdict = check_approval(approved("3"), Version("2"), PARAMS)
    assert verdict == Approved(version="3", approved_by="alice"), f"should be approved: {verdict}"


def test_first_promotion_has_no_champion_to_compare_with() -> None:
    verdict = check_approval(approved("1"), None, PARAMS)
    assert isinstance(verdict, Approved), f"no champion yet is fine: {verdict}"


@pytest.mark.parametrize(
    ("challenger", "champion", "code", "words"),
    [
        (approved(approval="pending"), Version("2"), "pending", "waiting for a reviewer"),
        (approved(approval="<unset>"), Version("2"), "unapproved", "not 'approved'"),
        (approved(approval="lgtm"), Version("2"), "unapproved", "'lgtm'"),
        (approved(approval="rejected", approved_by="bob"), Version("2"), "rejected", "rejected by bob"),
        (approved(gate="failed"), Version("2"), "gate_failed", "flywheel.gate='failed'"),
        (approved(gate="<unset>"), Version("2"), "gate_failed", "<unset>"),
        (approved(approved_by="<unset>"), Version("2"), "no_approver", "flywheel.approved_by"),
        (approved(approved_by="Trainer"), Version("2"), "same_approver", "who produced it"),
        (approved(produced_by="<unset>"), Version("2"), "same_approver", "cannot be verified"),
        (approved("2"), Version("5"), "not_newer", "older than the champion v5"),
        (approved("5"), Version("5"), "not_newer", "is the champion"),
        (approved(canary_state="rolled_back", canary_reason="error_rate"), None, "rolled_back", "error_rate"),
    ],
)
def test_refusals_name_the_reason(challenger: Version, champion: Version, code: str, words: str) -> None:
    # given a challenger with one thing wrong / when checked
    verdict = check_approval(challenger, champion, PARAMS)
    # then it is refused with that reason
    assert isinstance(verdict, Refusal), f"should be refused ({code}): {verdict}"
    assert verdict.code == code, f"refusal code: {verdict}"
    assert words in verdict.reason, f"the reason should say {words!r}: {verdict.reason}"


def test_a_failed_gate_wins_over_an_approval() -> None:
    verdict = check_approval(approved(gate="failed", approval="approved"), None, PARAMS)
    assert isinstance(verdict, Refusal) and verdict.code == "gate_failed", f"gate first: {verdict}"


def test_same_approver_is_allowed_when_separation_is_off() -> None:
    params = PromoteParams(require_separate_approver=False)
    verdict = check_approval(approved(approved_by="trainer"), Version("2"), params)
    assert isinstance(verdict, Approved), f"separation off: {verdict}"


def test_a_fresh_heartbeat_means_a_canary_is_running_and_a_stale_one_does_not() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    params = PromoteParams(analysis_window_seconds=60)
    fresh = {
        "flywheel.canary_state": "running",
        "flywheel.canary_heartbeat": (now - timedelta(seconds=30)).isoformat(),
    }
    stale = {
        "flywheel.canary_state": "running",
        "flywheel.canary_heartbeat": (now - timedelta(hours=1)).isoformat(),
    }
    assert canary_running(fresh, now, params) is not None, "a 30 s old heartbeat is a live canary"
    assert canary_running(stale, now, params) is None, "an hour-old heartbeat is a dead run"
    assert canary_running({}, now, params) is None, "no canary state: none running"
