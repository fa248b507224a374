"""Candidates in the registry: a version with lineage and the gate's verdict; `challenger` if it passed."""

from __future__ import annotations

from collections.abc import Mapping

from registry.models import ModelVersionInfo, register_model_version, set_alias

APPROVAL_TAG = "flywheel.approval"
GATE_TAG = "flywheel.gate"


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
) -> ModelVersionInfo:
    """Register the candidate at `source` (e.g. `runs:/<id>/adapter`) with its lineage and verdict.

    A passing candidate gets `flywheel.approval=pending` and the `challenger`
    alias, so a reviewer can approve it in the MLflow UI; a failing one is kept
    on record with `flywheel.gate=failed` and the failed rules, and no alias.
    """
    tags: dict[str, str] = {**lineage, **{f"score.{key}": f"{value:.6g}" for key, value in scores.items()}}
    tags["gate"] = "passed" if passed else "failed"
    if passed:
        tags["approval"] = "pending"
    else:
        tags["gate_failed_rules"] = ",".join(failed_rules)
    version = register_model_version(name, source, run_id=run_id, tags=tags, description=description)
    if passed:
        set_alias(name, "challenger", version.version)
    return version
