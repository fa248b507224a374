"""The canary step loop: set a weight, wait a window, analyse the request log, continue / hold / abort.

Like an Argo Rollouts or Flagger canary, but judged on LLM metrics (errors,
latency, TTFT, cost, output length, user feedback). The loop talks to the
registry through `PromotionPort` and to the request log through a
`WindowReader`, and takes its clock and sleep as arguments, so tests run it
in milliseconds with fakes.

Timing: at least `len(canary_steps) * analysis_window_seconds` to promote,
and at least one window to abort. At the last step (100%) the champion serves
nobody, so its rows from the whole canary are the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from flywheel.settings import PromoteParams
from registry import Subject
from tasks.promote.analysis import StepDecision, analyse, decide
from tasks.promote.audit import AuditTrail
from tasks.promote.window import ArmSelector, WindowReader

Notifier = Callable[[str, Mapping[str, object]], object]


class PromotionPort(Protocol):
    """The registry moves the loop makes (registry/promotion.py in production)."""

    def set_weight(self, version: str, weight: float) -> None:
        """Send `weight` (0..1) of users to the challenger."""
        ...

    def heartbeat(self, version: str, at: datetime) -> None:
        """Mark the canary as running, as of `at`."""
        ...

    def abort(self, version: str, reason: str) -> None:
        """Weight 0, tag rolled_back with the reason, remove the challenger alias."""
        ...

    def promote(self, version: str) -> str | None:
        """Previous <- champion, champion <- version; returns the old champion."""
        ...


@dataclass(frozen=True)
class RegistryPort:
    """`PromotionPort` on the MLflow registry (through registry/ only)."""

    subject: Subject

    def set_weight(self, version: str, weight: float) -> None:
        """Set `flywheel.canary_weight` on the challenger version."""
        from registry import set_canary_weight

        set_canary_weight(self.subject, version, weight)

    def heartbeat(self, version: str, at: datetime) -> None:
        """Tag `canary_state=running` and the heartbeat time."""
        from registry import mark_canary_running

        mark_canary_running(self.subject, version, at.isoformat())

    def abort(self, version: str, reason: str) -> None:
        """Abort through `registry.abort_canary`."""
        from registry import abort_canary

        abort_canary(self.subject, version, reason)

    def promote(self, version: str) -> str | None:
        """Promote through `registry.promote_challenger`."""
        from registry import promote_challenger

        return promote_challenger(self.subject, version)


@dataclass(frozen=True)
class CanaryPlan:
    """What the canary runs: the challenger against the current champion (None: the base model)."""

    subject: Subject
    challenger: str
    champion: str | None
    application: str | None = None

    def selector(self, arm: Literal["champion", "challenger"]) -> ArmSelector:
        """The request-log rows of one arm."""
        version = self.challenger if arm == "challenger" else self.champion
        return ArmSelector(arm=arm, kind=self.subject.kind, version=version, application=self.application)


@dataclass(frozen=True)
class StepResult:
    """One weight of the canary: every analysis's decision, the last one final."""

    percent: int
    decisions: tuple[StepDecision, ...]


@dataclass(frozen=True)
class CanaryOutcome:
    """How the canary ended: promoted (with the demoted champion) or aborted (with the reason)."""

    subject: str
    version: str
    promoted: bool
    reason: str
    previous: str | None = None
    failed_metrics: tuple[str, ...] = ()
    steps: tuple[StepResult, ...] = field(default_factory=tuple)

    def markdown(self) -> str:
        """A short report for the Prefect artifact."""
        verdict = "PROMOTED" if self.promoted else "ABORTED"
        lines = [f"# Canary of {self.subject} v{self.version}: {verdict}", "", self.reason, ""]
        lines += ["| step | analyses | decision | why |", "|---|---|---|---|"]
        for step in self.steps:
            last = step.decisions[-1]
            why = last.reason.replace("|", "/")
            lines.append(f"| {step.percent}% | {len(step.decisions)} | {last.decision} | {why} |")
        return "\n".join(lines)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def run_canary(
    plan: CanaryPlan,
    params: PromoteParams,
    port: PromotionPort,
    reader: WindowReader,
    audit: AuditTrail,
    notifier: Notifier = lambda event, payload: None,
    clock: Callable[[], datetime] = _utc_now,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryOutcome:
    """Walk the challenger through `params.canary_steps`; promote it, or abort at the first bad window.

    Any unexpected error (e.g. MLflow gone mid-canary) first tries to abort, so a
    half-done canary never keeps sending users to an unproven version, then raises.
    """
    subject, version = str(plan.subject), plan.challenger
    try:
        result = _steps(plan, params, port, reader, audit, notifier, clock, sleep)
    except Exception as error:
        # Not logging-and-reraising: the abort is the safety action (weight 0) this failure needs.
        reason = f"canary interrupted by {type(error).__name__}: {error}"
        try:
            port.abort(version, reason)
            audit.record("aborted", subject, version, reason)
        except Exception as cleanup:
            error.add_note(f"and the abort failed too: {cleanup}")
        raise
    if isinstance(result, CanaryOutcome):
        return result  # aborted
    # Outside the try: once the aliases have moved, an error must not tag the new champion rolled back.
    previous = port.promote(version)
    before = f"previous v{previous}" if previous is not None else "replacing the base model"
    reason = f"v{version} passed {len(result)} canary steps; champion now, {before}"
    audit.record("promoted", subject, version, reason, {"previous": previous})
    notifier("promoted", {"subject": subject, "version": version, "previous": previous, "reason": reason})
    return CanaryOutcome(subject, version, True, reason, previous=previous, steps=result)


def _steps(
    plan: CanaryPlan,
    params: PromoteParams,
    port: PromotionPort,
    reader: WindowReader,
    audit: AuditTrail,
    notifier: Notifier,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> CanaryOutcome | tuple[StepResult, ...]:
    """The steps: an aborted outcome, or every step's result when all passed."""
    subject, version = str(plan.subject), plan.challenger
    canary_start = clock()
    failures = 0
    steps: list[StepResult] = []
    audit.record(
        "canary_started",
        subject,
        version,
        f"canary {' -> '.join(f'{p}%' for p in params.canary_steps)} against "
        + (f"champion v{plan.champion}" if plan.champion is not None else "the base model (no champion yet)"),
        {"steps": list(params.canary_steps), "window_s": params.analysis_window_seconds},
    )
    for percent in params.canary_steps:
        port.set_weight(version, percent / 100)
        port.heartbeat(version, clock())
        audit.record(
            "step_started", subject, version, f"{percent}% of users on v{version}", {"percent": percent}
        )
        window_start = clock()
        holds = 0
        decisions: list[StepDecision] = []
        while True:
            sleep(params.analysis_window_seconds)
            # At 100% the champion has no users; its rows from the whole canary are the baseline.
            baseline_since = canary_start if percent == 100 else window_start
            analysis = analyse(
                reader.rows(plan.selector("challenger"), window_start),
                reader.rows(plan.selector("champion"), baseline_since),
                params,
            )
            decision = decide(analysis, holds=holds, failures=failures, params=params)
            decisions.append(decision)
            audit.record(
                "analysis",
                subject,
                version,
                decision.reason,
                {
                    "percent": percent,
                    "decision": decision.decision,
                    "failed_metrics": list(decision.failed_metrics),
                    "window_start": window_start.isoformat(),
                    **analysis.numbers(),
                },
            )
            port.heartbeat(version, clock())
            if decision.decision == "continue":
                break
            if decision.decision == "abort":
                steps.append(StepResult(percent, tuple(decisions)))
                return _abort(plan, port, audit, notifier, decision, tuple(steps))
            if decision.failed_metrics:
                failures += 1
                window_start = clock()  # a second opinion on fresh rows, not the same bad ones again
            else:
                holds += 1  # keep the window open: more rows accumulate
        steps.append(StepResult(percent, tuple(decisions)))
    return tuple(steps)


def _abort(
    plan: CanaryPlan,
    port: PromotionPort,
    audit: AuditTrail,
    notifier: Notifier,
    decision: StepDecision,
    steps: tuple[StepResult, ...],
) -> CanaryOutcome:
    subject, version = str(plan.subject), plan.challenger
    port.abort(version, decision.reason)
    audit.record(
        "aborted", subject, version, decision.reason, {"failed_metrics": list(decision.failed_metrics)}
    )
    notifier(
        "aborted",
        {
            "subject": subject,
            "version": version,
            "reason": decision.reason,
            "failed_metrics": list(decision.failed_metrics),
        },
    )
    return CanaryOutcome(
        subject, version, False, decision.reason, failed_metrics=decision.failed_metrics, steps=steps
    )
