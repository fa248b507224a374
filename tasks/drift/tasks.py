"""Prefect tasks of the drift flow: read two windows of the request log, compute, report, alert."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from flywheel.settings import DriftParams
from tasks.drift.drift import DriftResult, compute_drift
from tasks.drift.frame import Windows, load_window
from tasks.drift.report import markdown_report, write_html_report

ALERT_EVENT = "flywheel.drift.alert"


@task(name="load-drift-windows", retries=2, retry_delay_seconds=[2, 5])
def load_windows(
    request_log_uri: str, windows: Windows, application: str | None, version: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prefect task: the current and the baseline window of the request log (optionally one app/version)."""
    current = load_window(request_log_uri, windows.current_start, windows.end, application=application,
                          model_version=version)  # fmt: skip
    baseline = load_window(request_log_uri, windows.baseline_start, windows.current_start,
                           application=application, model_version=version)  # fmt: skip
    print(f"current window {len(current):,} requests, baseline {len(baseline):,}")
    return current, baseline


@task(name="compute-drift")
def drift_signals(
    current: pd.DataFrame, baseline: pd.DataFrame, params: DriftParams, home: Path
) -> DriftResult:
    """Prefect task: every signal, per group, with MiniLM embeddings cached per message on disk."""
    from flywheel.runtime.embeddings import EmbeddingCache, minilm_embed

    embed = minilm_embed(home / "cache" / "embeddings.sqlite")
    try:
        return compute_drift(current, baseline, embed, params)  # examples redacted by the curation redactor
    finally:
        if isinstance(embed, EmbeddingCache):
            embed.close()


@task(name="report-drift", retries=2, retry_delay_seconds=[2, 5])
def report(
    tracking_uri: str, experiment: str, result: DriftResult, current: pd.DataFrame, baseline: pd.DataFrame,
    windows: Windows, params: DriftParams,
) -> str:  # fmt: skip
    """Prefect task: markdown artifact, MLflow run (a metric per overall signal, the HTML report), event."""
    from registry.runs import log_stage_run

    markdown = markdown_report(result, windows)
    create_markdown_artifact(key="drift-report", markdown=markdown, description=f"drift: {result.status}")
    metrics = {
        f"{signal.name}": signal.value for signal in result.overall.signals if signal.value is not None
    }
    metrics |= {"alerts": float(len(result.alerts())), "n_current": float(result.overall.n_current)}
    with tempfile.TemporaryDirectory() as tmp:
        html = write_html_report(result, current, baseline, Path(tmp) / "drift_report.html", windows)
        (Path(tmp) / "drift_report.md").write_text(markdown, encoding="utf-8")
        run_id = log_stage_run(
            tracking_uri, experiment, "drift",
            {**params.model_dump(mode="json"), "current_start": windows.current_start, "end": windows.end},
            metrics, {"flywheel.drift.status": result.status},
            [html, Path(tmp) / "drift_report.md"],
        )  # fmt: skip
    if result.alerts():
        _emit_alert(result, windows)
    print(markdown)
    return run_id


def _emit_alert(result: DriftResult, windows: Windows) -> None:
    """A Prefect event an automation can turn into a notification (or a flywheel run)."""
    from prefect.events import emit_event

    emit_event(
        event=ALERT_EVENT,
        resource={"prefect.resource.id": "flywheel.drift"},
        payload={
            "window_end": windows.end.isoformat(),
            "input_drift": result.input_drift,
            "alerts": [
                {
                    "group": group.key,
                    "signal": signal.name,
                    "value": signal.value,
                    "threshold": signal.threshold,
                }
                for group, signal in result.alerts()
            ],
        },
    )


@task(name="trigger-flywheel")
def trigger_flywheel() -> str:
    """Prefect task: start the flywheel's first stage (`harvest`) because what users ask has drifted."""
    from prefect.deployments import run_deployment

    run = run_deployment(name="harvest/on-demand", timeout=0)
    print(f"input drift: started harvest/on-demand ({run.id})")  # type: ignore[union-attr]  # sync call
    return str(run.id)  # type: ignore[union-attr]


def window_end(end: datetime | None) -> datetime:
    """The end of the current window: the given moment, or now (UTC)."""
    from datetime import UTC

    return end if end is not None else datetime.now(UTC)
