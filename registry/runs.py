"""MLflow runs as the record of every stage: params, metrics, lineage tags, artifacts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from registry.errors import RegistryUnavailableError
from registry.tracking import configure_tracking

# MLflow caps a param value at 6,000 characters; longer values are cut, not rejected.
_MAX_PARAM = 6000


def log_stage_run(
    tracking_uri: str,
    experiment: str,
    stage: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts: Sequence[Path] = (),
    series: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> str:
    """One MLflow run named after the stage; returns its run id.

    `artifacts` are files or folders (a folder keeps its name under the run's
    artifact root, e.g. `data-docs/index.html`); `series` are per-step metrics
    (e.g. `train_loss` by step), which the MLflow UI draws as curves.
    """
    import time

    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    try:
        configure_tracking(tracking_uri, experiment)
        with mlflow.start_run(run_name=stage, tags={"flywheel.stage": stage, **tags}) as run:
            mlflow.log_params({key: str(value)[:_MAX_PARAM] for key, value in params.items()})
            mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
            now = int(time.time() * 1000)
            points = [
                Metric(key, float(value), now, int(step))
                for key, values in (series or {}).items()
                for step, value in values
            ]
            client = mlflow.MlflowClient()
            for start in range(0, len(points), 1000):  # MLflow's batch limit
                client.log_batch(run.info.run_id, metrics=points[start : start + 1000])
            for path in artifacts:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=path.name)
                elif path.exists():
                    mlflow.log_artifact(str(path))
            return str(run.info.run_id)
    except (MlflowException, OSError) as error:
        raise RegistryUnavailableError(
            f"cannot log the {stage} run to MLflow at {tracking_uri}: {error}"
        ) from error


def run_tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The tags of a run (e.g. the lineage a training run recorded)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return dict(MlflowClient(tracking_uri).get_run(run_id).data.tags)
    except MlflowException as error:
        raise RegistryUnavailableError(f"cannot read run {run_id} at {tracking_uri}: {error}") from error


def log_to_run(
    tracking_uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    tables: Mapping[str, object],
    files: Sequence[Path],
    texts: Mapping[str, str],
    files_path: str = "evaluation",
) -> None:
    """Add an evaluation to an existing run: metrics, tables (pandas frames), files and text artifacts."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        configure_tracking(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
            for name, frame in tables.items():
                mlflow.log_table(frame, artifact_file=name)  # type: ignore[arg-type]
            for path in files:
                mlflow.log_artifact(str(path), artifact_path=files_path)
            for name, text in texts.items():
                mlflow.log_text(text, name)
    except (MlflowException, OSError) as error:
        raise RegistryUnavailableError(f"cannot log the evaluation to run {run_id}: {error}") from error
