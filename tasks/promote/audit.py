"""The audit trail: every promotion decision appended to a JSONL file, and mirrored on the version.

One line per decision: who, when, what (the event), why, and the numbers. The
file is the durable record (append-only, fsynced); the MLflow mirror (latest
entry as a tag, the version's whole trail as a run artifact) is what a reviewer
sees in the UI, so a failing mirror is logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

AUDIT_LOG_ENV = "FLYWHEEL_AUDIT_LOG"

Event = Literal[
    "approval_needed",
    "reviewed",
    "approval_seen",
    "refused",
    "canary_started",
    "step_started",
    "analysis",
    "aborted",
    "promoted",
    "rolled_back",
]

# Mirrors an entry to the registry: (subject, version, entry JSON, the version's trail as JSONL,
# the same trail as a markdown "promotion history" section for the model card).
Mirror = Callable[[str, str, str, str, str], None]


def default_audit_path(home: Path) -> Path:
    """`$FLYWHEEL_AUDIT_LOG`, else `<FLYWHEEL_HOME>/audit/promotion.jsonl`."""
    return Path(os.environ.get(AUDIT_LOG_ENV) or home / "audit" / "promotion.jsonl")


@dataclass(frozen=True)
class AuditEntry:
    """One decision: who took it, when, about which version, what happened and why."""

    at: str
    who: str
    event: Event
    subject: str
    version: str
    why: str
    data: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        """One compact JSON line (numbers that are not JSON, like inf, become strings)."""
        return json.dumps(vars(self), default=str, sort_keys=False, allow_nan=False)


def _json_safe(value: object) -> object:
    # inf/nan (a zero-variance z-test) are not JSON; keep them readable rather than failing the audit.
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


class AuditTrail:
    """Appends entries to the JSONL file (thread-safe) and mirrors each one to the registry."""

    def __init__(
        self,
        path: Path,
        who: str,
        mirror: Mirror | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self.who = who
        self._mirror = mirror
        self._clock = clock
        self._lock = threading.Lock()

    def record(
        self,
        event: Event,
        subject: str,
        version: str,
        why: str,
        data: Mapping[str, object] | None = None,
        who: str | None = None,
    ) -> AuditEntry:
        """Append one entry (durable on return) and mirror it; returns the entry."""
        entry = AuditEntry(
            at=self._clock().isoformat(),
            who=who or self.who,
            event=event,
            subject=subject,
            version=str(version),
            why=why,
            data=_json_safe(dict(data or {})),  # type: ignore[arg-type]  # a Mapping stays a Mapping
        )
        line = entry.to_json()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        if self._mirror is not None:
            try:
                trail = self.entries(subject, entry.version)
                jsonl = "".join(item.to_json() + "\n" for item in trail)
                self._mirror(subject, entry.version, line, jsonl, history_markdown(trail))
            except Exception as error:  # the JSONL file holds the record; the UI copy may lag behind
                log.warning("could not mirror the audit entry to MLflow: %s", error)
        return entry

    def entries(self, subject: str | None = None, version: str | None = None) -> list[AuditEntry]:
        """The entries on file, optionally of one subject and version."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            raw = json.loads(line)
            if subject is not None and raw["subject"] != subject:
                continue
            if version is None or raw["version"] == version:
                found.append(AuditEntry(**raw))
        return found


def history_markdown(entries: list[AuditEntry]) -> str:
    """A "Promotion history" section for the model card: one table row per decision."""
    lines = ["## Promotion history", "", "| when (UTC) | who | event | why |", "|---|---|---|---|"]
    for entry in entries:
        why = entry.why.replace("|", "/").replace("\n", " ")
        lines.append(f"| {entry.at[:19]} | {entry.who} | {entry.event} | {why} |")
    return "\n".join(lines) + "\n"
