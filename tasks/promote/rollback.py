"""Rollback: `previous` back to champion at once, audited and notified."""

from __future__ import annotations

from collections.abc import Callable

from tasks.promote.audit import AuditTrail
from tasks.promote.canary import Notifier

# Moves the aliases: takes the reason, returns (restored version, demoted version or None).
AliasMove = Callable[[str], tuple[str, str | None]]


def roll_back(subject: str, reason: str, move: AliasMove, audit: AuditTrail, notifier: Notifier) -> str:
    """Restore the previous champion; returns its version."""
    restored, demoted = move(reason)
    why = f"v{restored} restored as champion (v{demoted} demoted to previous): {reason}"
    audit.record("rolled_back", subject, restored, why, {"demoted": demoted})
    if demoted is not None:
        audit.record("rolled_back", subject, demoted, why, {"restored": restored})
    notifier("rolled_back", {"subject": subject, "version": restored, "demoted": demoted, "reason": reason})
    return restored
