"""Candidates in the registry: a version with lineage and the gate's verdict; `challenger` if it passed."""

from __future__ import annotations

from collections.abc import Mapping

from registry.models import ModelVersionInfo, _prefixed, register_model_version, set_alias
from registry.promotion import APPROVED_BY_TAG, PRODUCED_BY_TAG, Subject, current_identity, set_tags
from registry.prompts import PromptVersionInfo, register_prompt, set_prompt_alias

APPROVAL_TAG = "flywheel.approval"
GATE_TAG = "flywheel.gate"


def verdict_tags(
    passed: bool,
    failed_rules: list[str],
    lineage: Mapping[str, str],
    scores: Mapping[str, float],
    produced_by: str | None,
) -> dict[str, str]:
    """The tags (without the `flywheel.` prefix) a gated candidate carries: lineage, scores, verdict."""
    tags: dict[str, str] = {**lineage, **{f"score.{key}": f"{value:.6g}" for key, value in scores.items()}}
    tags["gate"] = "passed" if passed else "failed"
    tags[PRODUCED_BY_TAG] = produced_by or current_identity()
    if passed:
        tags["approval"] = "pending"
    else:
        tags["gate_failed_rules"] = ",".join(failed_rules)
    return tags


def register_candidate(
    name: str,
    source: str,
    run_id: str,
    *,
    passed: bool,
    failed_rules: list[str],
    lineage: Mapping[str, str],
    scores: Mapping[str, float],
    description: str,
    produced_by: str | None = None,
) -> ModelVersionInfo:
    """Register the candidate at `source` (e.g. `runs:/<id>/adapter`) with its lineage and verdict.

    A passing candidate gets `flywheel.approval=pending` and the `challenger`
    alias, so a reviewer can approve it in the MLflow UI; a failing one is kept
    on record with `flywheel.gate=failed` and the failed rules, and no alias.
    `flywheel.produced_by` (default: this process's identity) lets promotion
    refuse an approval by the same identity.
    """
    tags = verdict_tags(passed, failed_rules, lineage, scores, produced_by)
    version = register_model_version(name, source, run_id=run_id, tags=tags, description=description)
    if passed:
        set_alias(name, "challenger", version.version)
    return version


def register_prompt_candidate(
    name: str,
    template: str,
    *,
    passed: bool,
    failed_rules: list[str],
    lineage: Mapping[str, str],
    scores: Mapping[str, float],
    commit_message: str,
    produced_by: str | None = None,
) -> PromptVersionInfo:
    """Register a gated prompt candidate as a prompt version, as `register_candidate` does a model.

    Prompt version tags keep the `flywheel.` prefix like model version tags; a
    passing prompt gets the `challenger` prompt alias.
    """
    raw = verdict_tags(passed, failed_rules, lineage, scores, produced_by)
    version = register_prompt(name, template, commit_message=commit_message, tags=_prefixed(raw))
    if passed:
        set_prompt_alias(name, "challenger", version.version)
    return version


def record_review(subject: Subject, version: str, approved: bool, reviewer: str) -> None:
    """A reviewer's decision on a challenger, as the MLflow UI would set it by hand.

    `flywheel.approval=approved|rejected` and `flywheel.approved_by=<reviewer>`; the
    promote flow reads them (and refuses an approver who produced the candidate).
    """
    if not reviewer.strip():
        raise ValueError("a review needs the reviewer's name (the audit trail records it)")
    decision = "approved" if approved else "rejected"
    set_tags(subject, version, {APPROVAL_TAG: decision, APPROVED_BY_TAG: reviewer.strip()})
