"""Prefect tasks of the parent flywheel flow: the turn's bookkeeping and a skip for finished evaluations."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.flywheel.turn import count_raw_records, load_state, nothing_to_learn, save_state


@task(name="check-new-data")
def check_new_data(raw_dir: Path, state_dir: Path, min_new_records: int) -> tuple[int, str | None]:
    """Prefect task: raw records now, and why the turn ends early (None: go on)."""
    raw_records = count_raw_records(raw_dir)
    reason = nothing_to_learn(raw_records, load_state(state_dir), min_new_records)
    return raw_records, reason


@task(name="registered-version", retries=2, retry_delay_seconds=[2, 5])
def registered_version(tracking_uri: str, name: str, run_id: str, kind: str) -> str | None:
    """Prefect task: the model (or prompt) version an earlier try already registered from `run_id`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    if kind == "prompt":
        try:
            versions = list(client.search_prompt_versions(name))
        except MlflowException:  # no such prompt yet: nothing registered from this run
            return None
        found = [v for v in versions if v.tags.get("flywheel.run_id") == run_id]
    else:
        found = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    return str(found[0].version) if found else None


@task(name="complete-turn")
def complete_turn(state_dir: Path, raw_records: int, retrain_run_id: str | None, summary: str) -> None:
    """Prefect task: record the completed turn and publish its summary."""
    save_state(state_dir, raw_records, retrain_run_id)
    create_markdown_artifact(key="flywheel-turn", markdown=summary)
    print(summary)
