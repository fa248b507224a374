"""Approval policy: may this challenger get canary traffic? Pure: tags in, a verdict out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from flywheel.settings import PromoteParams
from registry import (
    APPROVAL_TAG,
    APPROVED_BY_TAG,
    CANARY_HEARTBEAT_TAG,
    CANARY_REASON_TAG,
    CANARY_STATE_TAG,
    GATE_TAG,
    PRODUCED_BY_TAG,
)

RefusalCode = Literal[
    "pending",
    "unapproved",
    "rejected",
    "gate_failed",
    "no_approver",
    "same_approver",
    "not_newer",
    "canary_running",
    "rolled_back",
]


class Versioned(Protocol):
    """A model or prompt version: a number and its tags."""

    @property
    def version(self) -> str: ...

    @property
    def tags(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Approved:
    """The challenger may start its canary; `approved_by` is who said so."""

    version: str
    approved_by: str


@dataclass(frozen=True)
class Refusal:
    """The challenger may not get traffic, and why (a sentence for the flow log)."""

    version: str
    code: RefusalCode
    reason: str


def _number(version: str) -> int | None:
    try:
        return int(version)
    except ValueError:
        return None


def check_approval(
    challenger: Versioned, champion: Versioned | None, params: PromoteParams
) -> Approved | Refusal:
    """Approved, or the first reason (in the order a reviewer would fix them) to refuse the challenger."""
    tags = challenger.tags
    version = challenger.version
    approval = tags.get(APPROVAL_TAG, "").strip().lower()
    approver = tags.get(APPROVED_BY_TAG, "").strip()
    producer = tags.get(PRODUCED_BY_TAG, "").strip()

    def refuse(code: RefusalCode, reason: str) -> Refusal:
        return Refusal(version=version, code=code, reason=f"v{version}: {reason}")

    # The gate comes first: a failed gate is never promotable, whatever a reviewer clicked.
    if tags.get(GATE_TAG, "").strip().lower() != "passed":
        return refuse("gate_failed", f"{GATE_TAG}={tags.get(GATE_TAG, '<unset>')!r}, not 'passed'")
    if tags.get(CANARY_STATE_TAG) == "rolled_back":
        # An aborted version is not retried by the schedule: a person decides, by clearing the tag.
        why = tags.get(CANARY_REASON_TAG, "no reason recorded")
        return refuse(
            "rolled_back", f"its canary was rolled back ({why}); delete {CANARY_STATE_TAG} to retry"
        )
    if approval == "rejected":
        by = f" by {approver}" if approver else ""
        return refuse("rejected", f"rejected{by} ({APPROVAL_TAG}=rejected)")
    if approval == "pending":
        return refuse("pending", f"waiting for a reviewer ({APPROVAL_TAG}=pending)")
    if approval != "approved":
        return refuse("unapproved", f"{APPROVAL_TAG}={tags.get(APPROVAL_TAG, '<unset>')!r}, not 'approved'")
    if not approver:
        return refuse("no_approver", f"approved without {APPROVED_BY_TAG}: the audit trail needs a name")
    if params.require_separate_approver:
        if not producer:
            return refuse(
                "same_approver", f"no {PRODUCED_BY_TAG} tag, so a separate approver cannot be verified"
            )
        if approver.casefold() == producer.casefold():
            return refuse(
                "same_approver",
                f"approved by {approver!r}, who produced it (promote.require_separate_approver is on)",
            )
    if champion is not None:
        mine, theirs = _number(version), _number(champion.version)
        if mine is not None and theirs is not None and mine <= theirs:
            what = "is the champion" if mine == theirs else f"is older than the champion v{theirs}"
            return refuse("not_newer", what)
    return Approved(version=version, approved_by=approver)


def canary_running(tags: Mapping[str, str], now: datetime, params: PromoteParams) -> str | None:
    """Why another canary of this version seems to be running (a fresh heartbeat), or None.

    A heartbeat older than two windows plus two minutes means that run died; a
    new run may take over (it restarts at the first step).
    """
    if tags.get(CANARY_STATE_TAG) != "running":
        return None
    try:
        beat = datetime.fromisoformat(tags.get(CANARY_HEARTBEAT_TAG, ""))
    except ValueError:
        return None
    age = (now - beat).total_seconds()
    if age > 2 * params.analysis_window_seconds + 120:
        return None
    return f"a canary of this version is already running (last heartbeat {age:.0f}s ago)"
