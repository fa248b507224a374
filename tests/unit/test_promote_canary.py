"""The canary loop with a fake registry, a fake request log and a fake clock: fast and exact."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from flywheel.settings import PromoteParams
from registry import AliasState, Subject, VersionRef
from tasks.promote.audit import AuditTrail, history_markdown
from tasks.promote.canary import CanaryPlan, run_canary
from tasks.promote.policy import Approved, Refusal
from tasks.promote.review import review_challenger
from tasks.promote.rollback import roll_back
from tasks.promote.window import ArmSelector
from tests.unit.test_promote_analysis import rows

SUBJECT = Subject("model", "flywheel-support")
PARAMS = PromoteParams(analysis_window_seconds=60, min_requests_per_arm=20, max_holds=2, failure_limit=1)


@dataclass
class FakeClock:
    """Time that moves only when the loop sleeps."""

    now: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@dataclass
class FakePort:
    """Records the registry moves in order."""

    calls: list[tuple[str, ...]] = field(default_factory=list)
    weight: float = 0.0

    def set_weight(self, version: str, weight: float) -> None:
        self.weight = weight
        self.calls.append(("weight", version, f"{weight:g}"))

    def heartbeat(self, version: str, at: datetime) -> None:
        pass

    def abort(self, version: str, reason: str) -> None:
        self.weight = 0.0
        self.calls.append(("abort", version))

    def promote(self, version: str) -> str | None:
        self.calls.append(("promote", version))
        return "1"


@dataclass
class FakeReader:
    """Rows per arm as a function of the current weight: 1,000 requests per window split by weight."""

    port: FakePort
    challenger_errors_every: int = 0
    per_window: int = 1000
    reads: list[ArmSelector] = field(default_factory=list)

    def rows(self, selector: ArmSelector, since: datetime) -> pd.DataFrame:
        self.reads.append(selector)
        share = self.port.weight if selector.arm == "challenger" else 1 - self.port.weight
        n = int(self.per_window * share)
        if selector.arm == "challenger":
            return rows(n, arm="challenger", error_every=self.challenger_errors_every)
        # at 100% the loop reads the champion's rows since the canary started: give it some
        return rows(max(n, 500))


@dataclass
class Notes:
    """A notifier that remembers what it was asked to send."""

    sent: list[tuple[str, Mapping[str, object]]] = field(default_factory=list)

    def __call__(self, event: str, payload: Mapping[str, object]) -> None:
        self.sent.append((event, payload))


def _run(tmp_path: Path, reader_errors: int = 0, per_window: int = 1000, params: PromoteParams = PARAMS):  # type: ignore[no-untyped-def]
    clock, port, notes = FakeClock(), FakePort(), Notes()
    reader = FakeReader(port, reader_errors, per_window)
    audit = AuditTrail(tmp_path / "audit.jsonl", "flow", clock=clock)
    outcome = run_canary(
        CanaryPlan(SUBJECT, "2", "1"), params, port, reader, audit, notes, clock, clock.sleep
    )
    return outcome, port, notes, audit, clock


def test_a_good_challenger_walks_5_25_100_and_is_promoted(tmp_path: Path) -> None:
    # given a challenger that behaves like the champion / when the canary runs
    outcome, port, notes, audit, clock = _run(tmp_path)
    # then the weights went 5 -> 25 -> 100 and it was promoted, each step one window long
    weights = [call[2] for call in port.calls if call[0] == "weight"]
    assert weights == ["0.05", "0.25", "1"], f"steps: {port.calls}"
    assert port.calls[-1] == ("promote", "2"), f"promoted last: {port.calls}"
    assert outcome.promoted and outcome.previous == "1", f"{outcome}"
    assert clock.slept == [60, 60, 60], f"one window per step (minimum time to promote): {clock.slept}"
    events = [entry.event for entry in audit.entries()]
    assert events == ["canary_started"] + ["step_started", "analysis"] * 3 + ["promoted"], f"{events}"
    assert [event for event, _ in notes.sent] == ["promoted"], f"one notification: {notes.sent}"
    history = history_markdown(audit.entries())
    assert history.startswith("## Promotion history") and "| flow | promoted |" in history, history


def test_a_bad_challenger_is_aborted_at_the_first_step_with_the_metric_in_the_audit(tmp_path: Path) -> None:
    # given a challenger failing every 5th request
    outcome, port, notes, audit, _ = _run(tmp_path, reader_errors=5)
    # then it never got past 5%, was aborted, and the audit names error_rate with its numbers
    assert port.calls == [("weight", "2", "0.05"), ("abort", "2")], f"abort at 5%: {port.calls}"
    assert not outcome.promoted and outcome.failed_metrics == ("error_rate",), f"{outcome}"
    aborted = audit.entries()[-1]
    assert aborted.event == "aborted" and "error_rate 0.2" in aborted.why, f"{aborted}"
    analysis = next(e for e in audit.entries() if e.event == "analysis")
    assert analysis.data["challenger"]["errors"] == 10, f"numbers in the audit: {analysis.data}"
    assert [event for event, _ in notes.sent] == ["aborted"], f"{notes.sent}"


def test_too_little_traffic_holds_max_holds_times_then_aborts(tmp_path: Path) -> None:
    # given 100 requests per window: 5 on the challenger at 5%, and holds accumulate no more (fake)
    outcome, port, _, audit, clock = _run(tmp_path, per_window=100)
    # then: analysed 3 times at 5% (2 holds), then aborted for lack of traffic
    decisions = [e.data["decision"] for e in audit.entries() if e.event == "analysis"]
    assert decisions == ["hold", "hold", "abort"], f"{decisions}"
    assert port.calls[-1] == ("abort", "2") and "not enough traffic" in outcome.reason, f"{outcome.reason}"
    assert len(clock.slept) == 3, f"three windows: {clock.slept}"


def test_an_error_mid_canary_aborts_then_raises(tmp_path: Path) -> None:
    # given a reader whose database goes away
    clock, port = FakeClock(), FakePort()

    class Broken:
        def rows(self, selector: ArmSelector, since: datetime) -> pd.DataFrame:
            raise ConnectionError("request log unreachable")

    audit = AuditTrail(tmp_path / "audit.jsonl", "flow", clock=clock)
    # when the canary runs / then it raises, but only after setting the weight back to 0
    with pytest.raises(ConnectionError):
        run_canary(CanaryPlan(SUBJECT, "2", "1"), PARAMS, port, Broken(), audit, Notes(), clock, clock.sleep)
    assert port.calls[-1] == ("abort", "2") and port.weight == 0.0, f"safety abort: {port.calls}"


def test_a_prompt_canary_selects_rows_by_prompt_version(tmp_path: Path) -> None:
    clock, port = FakeClock(), FakePort()
    reader = FakeReader(port)
    audit = AuditTrail(tmp_path / "audit.jsonl", "flow", clock=clock)
    plan = CanaryPlan(Subject("prompt", "system"), "4", "3")
    run_canary(plan, PARAMS, port, reader, audit, Notes(), clock, clock.sleep)
    assert {(s.kind, s.arm, s.version) for s in reader.reads} == {
        ("prompt", "challenger", "4"),
        ("prompt", "champion", "3"),
    }


def _state(**tags: str) -> AliasState:
    full = {
        "flywheel.gate": "passed",
        "flywheel.produced_by": "trainer",
        **{f"flywheel.{k}": v for k, v in tags.items()},
    }
    return AliasState(
        champion=VersionRef(SUBJECT, "1", {}), challenger=VersionRef(SUBJECT, "2", full), previous=None
    )


def test_review_notifies_approval_needed_once_and_audits_refusals_once(tmp_path: Path) -> None:
    audit, notes, marked = AuditTrail(tmp_path / "a.jsonl", "flow"), Notes(), []
    now = datetime(2026, 1, 1, tzinfo=UTC)
    # given a pending challenger: notified and tagged on the first review
    pending = review_challenger(_state(approval="pending"), PARAMS, audit, notes, now, marked.append)
    assert isinstance(pending, Refusal) and pending.code == "pending", f"{pending}"
    assert [e for e, _ in notes.sent] == ["approval_needed"] and marked == ["2"], f"{notes.sent} {marked}"
    # and not again once the tag is there
    review_challenger(
        _state(approval="pending", approval_notified="x"), PARAMS, audit, notes, now, marked.append
    )
    assert len(notes.sent) == 1, "approval needed is sent once"
    # a rejection is audited once however often the schedule looks
    for _ in range(3):
        review_challenger(_state(approval="rejected"), PARAMS, audit, notes, now, marked.append)
    refused = [e for e in audit.entries() if e.event == "refused"]
    assert len(refused) == 1 and "rejected" in refused[0].why, f"{refused}"
    # an approval is audited under the approver's name
    verdict = review_challenger(
        _state(approval="approved", approved_by="alice"), PARAMS, audit, notes, now, marked.append
    )
    assert isinstance(verdict, Approved), f"{verdict}"
    assert audit.entries()[-1].who == "alice", f"who approved: {audit.entries()[-1]}"


def test_rollback_audits_both_versions_and_notifies(tmp_path: Path) -> None:
    audit, notes = AuditTrail(tmp_path / "a.jsonl", "ops"), Notes()
    restored = roll_back(str(SUBJECT), "bad answers", lambda why: ("1", "2"), audit, notes)
    assert restored == "1", restored
    assert [(e.event, e.version) for e in audit.entries()] == [("rolled_back", "1"), ("rolled_back", "2")]
    assert notes.sent[0][0] == "rolled_back", f"{notes.sent}"


def test_a_failing_mirror_never_loses_the_audit_entry(tmp_path: Path) -> None:
    def broken(*args: str) -> None:
        raise ConnectionError("mlflow down")

    audit = AuditTrail(tmp_path / "a.jsonl", "flow", mirror=broken)
    audit.record("aborted", "model m", "2", "why", {"z": float("inf")})
    [entry] = audit.entries()
    assert entry.why == "why" and entry.data == {"z": "inf"}, f"kept on file, inf as text: {entry}"
