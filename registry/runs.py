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
) -> str:
    """One MLflow run named after the stage; returns its run id.

    `artifacts` are files or folders (a folder keeps its name under the run's
    artifact root, e.g. `data-docs/index.html`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        configure_tracking(tracking_uri, experiment)
        with mlflow.start_run(run_name=stage, tags={"flywheel.stage": stage, **tags}) as run:
            mlflow.log_params({key: str(value)[:_MAX_PARAM] for key, value in params.items()})
            mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
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
