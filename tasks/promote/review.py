"""Reviewing the challenger before a canary: approval checks, the audit entry, "approval needed" once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flywheel.settings import PromoteParams
from registry import APPROVAL_NOTIFIED_TAG, AliasState
from tasks.promote.audit import AuditTrail
from tasks.promote.canary import Notifier
from tasks.promote.policy import Approved, Refusal, canary_running, check_approval


def review_challenger(
    state: AliasState,
    params: PromoteParams,
    audit: AuditTrail,
    notifier: Notifier,
    now: datetime,
    mark_notified: Callable[[str], None],
) -> Approved | Refusal | None:
    """The verdict on the current challenger (None: there is none), recorded and notified.

    A pending challenger triggers "approval needed" once (remembered by a tag,
    since the flow runs every few minutes); a refusal is audited once per reason.
    """
    challenger = state.challenger
    if challenger is None:
        return None
    subject, version = str(challenger.subject), challenger.version
    running = canary_running(challenger.tags, now, params)
    if running is not None:
        return Refusal(version, "canary_running", f"v{version}: {running}")
    verdict = check_approval(challenger, state.champion, params)
    if isinstance(verdict, Approved):
        audit.record(
            "approval_seen",
            subject,
            version,
            f"approved by {verdict.approved_by}",
            {"tags": dict(challenger.tags)},
            who=verdict.approved_by,
        )
        return verdict
    if verdict.code == "pending":
        if APPROVAL_NOTIFIED_TAG not in challenger.tags:
            audit.record("approval_needed", subject, version, verdict.reason)
            notifier("approval_needed", {"subject": subject, "version": version, "reason": verdict.reason})
            mark_notified(version)
        return verdict
    earlier = audit.entries(subject, version)
    if not earlier or earlier[-1].event != "refused" or earlier[-1].why != verdict.reason:
        audit.record("refused", subject, version, verdict.reason, {"code": verdict.code})
    return verdict


class ReviewError(ValueError):
    """A review that cannot be recorded: no challenger, or a version that is not it."""


def record_reviewer_decision(
    state: AliasState,
    version: str | None,
    approved: bool,
    reviewer: str,
    audit: AuditTrail,
    record: Callable[[str, bool, str], None],
    note: str = "",
) -> str:
    """Approve or reject the current challenger (`version`, if given, must be it); returns its version.

    `record(version, approved, reviewer)` sets the registry tags a reviewer sets in the
    MLflow UI; the decision is audited under the reviewer's name.
    """
    challenger = state.challenger
    if challenger is None:
        raise ReviewError("there is no challenger to review")
    if version is not None and str(version) != challenger.version:
        raise ReviewError(f"v{version} is not the challenger (v{challenger.version} is)")
    record(challenger.version, approved, reviewer)
    decision = "approved" if approved else "rejected"
    audit.record(
        "reviewed",
        str(challenger.subject),
        challenger.version,
        f"{decision} by {reviewer}" + (f": {note}" if note else ""),
        {"approved": approved},
        who=reviewer,
    )
    return challenger.version
