"""rollback: put `previous` back as champion at once (the gateway follows within one poll)."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flywheel.settings import Environment, load_params
from registry import Subject, configure_tracking, current_identity
from tasks.promote.audit import default_audit_path
from tasks.promote.tasks import rollback as rollback_task


@flow(name="rollback", log_prints=True)
def rollback(kind: Literal["model", "prompt"] = "model", reason: str = "manual rollback") -> str:
    """Restore the previous champion of the model (or the prompt); returns its version.

    1. read params (`project`) and where things run (MLflow, audit log)
    2. move `champion` to the `previous` version in one alias set; the demoted one becomes `previous`
    3. audit and notify the rollback
    """
    params = load_params()
    env = Environment()
    configure_tracking(env.tracking_uri)
    name = params.project.registered_model if kind == "model" else params.project.prompt_name
    subject = Subject(kind, name)
    return rollback_task(subject, reason, default_audit_path(env.home), current_identity())
