"""Per-version time series in MLflow: one run per (model, version, stage) that each check appends to.

The regression run of a version appends its scores to that version's run with
the check's number as the step, so the MLflow UI draws each metric as a curve
over the nights; earlier points are the history a new check compares with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from registry.errors import RegistryUnavailableError
from registry.tracking import configure_tracking


@dataclass(frozen=True)
class SeriesRun:
    """A version's series run and the points logged so far, oldest first."""

    run_id: str
    points: tuple[dict[str, float], ...]  # one mapping metric -> value per earlier check

    @property
    def next_step(self) -> int:
        """The step the next check logs at."""
        return len(self.points)


def open_series(
    tracking_uri: str, experiment: str, stage: str, model: str, version: str, metrics: tuple[str, ...]
) -> SeriesRun:
    """The series run of `model` version `version` for `stage` (created on first use) and its points."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        configure_tracking(tracking_uri, experiment)
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise RegistryUnavailableError(f"experiment {experiment!r} is missing at {tracking_uri}")
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=(
                f"tags.`flywheel.stage` = '{stage}' and tags.`flywheel.model` = '{model}' "
                f"and tags.`flywheel.model_version` = '{version}'"
            ),
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run = client.create_run(
                exp.experiment_id,
                run_name=f"{stage}-{model}-v{version}",
                tags={"flywheel.stage": stage, "flywheel.model": model, "flywheel.model_version": version},
            )
            run_id = run.info.run_id
        by_step: dict[int, dict[str, float]] = {}
        for metric in metrics:
            for point in client.get_metric_history(run_id, metric):
                by_step.setdefault(int(point.step), {})[metric] = float(point.value)
    except MlflowException as error:
        raise RegistryUnavailableError(
            f"cannot read the {stage} series of {model} v{version}: {error}"
        ) from error
    return SeriesRun(run_id, tuple(by_step[step] for step in sorted(by_step)))


def append_point(
    tracking_uri: str,
    series: SeriesRun,
    metrics: Mapping[str, float],
    texts: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
) -> int:
    """Log one check's metrics at the series' next step, with text artifacts under `check-<step>/`."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    step = series.next_step
    now = int(time.time() * 1000)
    try:
        client = MlflowClient(tracking_uri)
        client.log_batch(
            series.run_id,
            metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()],
        )
        for name, text in texts.items():
            client.log_text(series.run_id, text, f"check-{step:04d}/{name}")
        for key, value in (tags or {}).items():
            client.set_tag(series.run_id, key, value)
        # FINISHED between checks, so the UI shows no run that looks stuck; MLflow takes later points.
        client.set_terminated(series.run_id)
    except MlflowException as error:
        raise RegistryUnavailableError(f"cannot log to series run {series.run_id}: {error}") from error
    return step
