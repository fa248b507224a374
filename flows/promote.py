"""promote: an approved challenger goes through the staged canary and becomes champion, or is rolled back."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flywheel.settings import Environment, load_params, override
from registry import Subject, current_identity
from tasks.promote.audit import default_audit_path
from tasks.promote.canary import CanaryPlan
from tasks.promote.policy import Approved
from tasks.promote.tasks import canary, read_aliases, review


@flow(name="promote", log_prints=True)
def promote(
    kind: Literal["model", "prompt"] = "model",
    analysis_window_seconds: float | None = None,
    canary_steps: list[int] | None = None,
    min_requests_per_arm: int | None = None,
    min_feedback_per_arm: int | None = None,
) -> dict[str, object]:
    """Pick up an approved challenger and run its canary (5% -> 25% -> 100% by default).

    The other parameters override the `promote` section for this run (the demo's short canary).

    1. read params (`promote`, `project`) and where things run (MLflow, request log, audit log)
    2. read champion / challenger / previous of the model (or the prompt)
    3. review the challenger: approved, or refused with the reason in this log (and the audit log);
       a pending one triggers the "approval needed" webhook once
    4. the canary: per step set the weight, wait the window, analyse the request log, continue / hold /
       abort; abort -> weight 0 and no challenger; success -> champion, old champion -> previous
    """
    params = load_params()
    settings = override(
        params.promote,
        analysis_window_seconds=analysis_window_seconds,
        canary_steps=tuple(canary_steps) if canary_steps else None,
        min_requests_per_arm=min_requests_per_arm,
        min_feedback_per_arm=min_feedback_per_arm,
    )
    env = Environment()
    name = params.project.registered_model if kind == "model" else params.project.prompt_name
    subject, who, audit_path = Subject(kind, name), current_identity(), default_audit_path(env.home)
    state = read_aliases(env.tracking_uri, subject)
    verdict = review(state, subject, settings, audit_path, who)
    if not isinstance(verdict, Approved):
        return {"promoted": False, "reason": verdict.reason if verdict else "no challenger"}
    champion = state.champion.version if state.champion is not None else None
    plan = CanaryPlan(subject, verdict.version, champion, params.project.application)
    outcome = canary(plan, settings, env.request_log_uri, audit_path, who)
    return {"promoted": outcome.promoted, "version": outcome.version, "reason": outcome.reason}
