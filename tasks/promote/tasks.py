"""Prefect tasks of the promote and rollback flows: thin shells over the plain functions of this package."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from flywheel.settings import PromoteParams
from registry import AliasState, Subject
from tasks.promote.audit import AuditTrail
from tasks.promote.canary import CanaryOutcome, CanaryPlan, RegistryPort, run_canary
from tasks.promote.notify import notify, webhook_url
from tasks.promote.policy import Approved, Refusal
from tasks.promote.review import review_challenger
from tasks.promote.rollback import roll_back
from tasks.promote.window import SqlWindowReader


def registry_audit(path: Path, who: str, subject: Subject) -> AuditTrail:
    """The audit trail at `path`, mirrored onto the versions of `subject` in MLflow."""
    from registry import mirror_audit

    return AuditTrail(
        path,
        who,
        mirror=lambda _s, version, entry, trail, history: mirror_audit(
            subject, version, entry, trail, history
        ),
    )


def webhook_notifier(event: str, payload: Mapping[str, object]) -> bool:
    """Notify the webhook from the environment (if any); never raises."""
    return notify(event, payload, webhook_url())


@task(name="read-aliases", retries=3, retry_delay_seconds=[2, 5, 15])
def read_aliases(tracking_uri: str, subject: Subject) -> AliasState:
    """Prefect task: champion, challenger and previous of the model or prompt."""
    import registry

    registry.configure_tracking(tracking_uri)
    return registry.read_aliases(subject)


@task(name="review-challenger")
def review(
    state: AliasState, subject: Subject, params: PromoteParams, audit_path: Path, who: str
) -> Approved | Refusal | None:
    """Prefect task: the approval verdict on the challenger, audited; refusals printed to the flow log."""
    from registry import mark_approval_notified

    verdict = review_challenger(
        state,
        params,
        registry_audit(audit_path, who, subject),
        webhook_notifier,
        datetime.now(UTC),
        lambda version: mark_approval_notified(subject, version, datetime.now(UTC).isoformat()),
    )
    if verdict is None:
        print(f"{subject}: no challenger, nothing to promote")
    elif isinstance(verdict, Refusal):
        print(f"{subject}: not promoting {verdict.reason} [{verdict.code}]")
    else:
        print(f"{subject}: v{verdict.version} approved by {verdict.approved_by}; starting the canary")
    return verdict


@task(name="canary")
def canary(
    plan: CanaryPlan, params: PromoteParams, request_log_url: str, audit_path: Path, who: str
) -> CanaryOutcome:
    """Prefect task: the step loop (no retries: it moves aliases; the next scheduled run is the retry)."""
    reader = SqlWindowReader(request_log_url)
    try:
        outcome = run_canary(
            plan, params, RegistryPort(plan.subject), reader, registry_audit(audit_path, who, plan.subject),
            webhook_notifier,
        )  # fmt: skip
    finally:
        reader.close()
    create_markdown_artifact(key="canary", markdown=outcome.markdown())
    print(outcome.reason)
    return outcome


@task(name="rollback")
def rollback(subject: Subject, reason: str, audit_path: Path, who: str) -> str:
    """Prefect task: `previous` back to champion; returns the restored version."""
    from registry import rollback_champion

    restored = roll_back(
        str(subject),
        reason,
        lambda why: rollback_champion(subject, why),
        registry_audit(audit_path, who, subject),
        webhook_notifier,
    )
    create_markdown_artifact(
        key="rollback", markdown=f"# Rollback of {subject}\n\nv{restored} is champion again: {reason}"
    )
    print(f"{subject}: v{restored} is champion again")
    return restored
