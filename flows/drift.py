"""drift: what users ask and how the served versions behave, current window against a baseline window."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from flywheel.settings import Environment, load_params, override
from tasks.drift.frame import drift_windows
from tasks.drift.tasks import drift_signals, load_windows, report, trigger_flywheel, window_end


@flow(name="drift", log_prints=True)
def drift(
    current_hours: int | None = None,
    baseline_days: int | None = None,
    application: str | None = None,
    version: str | None = None,
    end: datetime | None = None,
) -> dict[str, object]:
    """Compare the last `current_hours` of the request log with the `baseline_days` before (params).

    `application` / `version` narrow both windows; `end` moves them back in time (default now).

    1. read params (`drift`; flow parameters override it) and where things run
    2. load both windows from the request log
    3. signals overall, per application and per served version: MiniLM centroid distance and
       MMD test on user messages, tokens per query, p95 TTFT and latency, error rate, cost per
       query, feedback positive rate (z-test), new topics with redacted examples; too few
       requests is `insufficient_data`, not an error
    4. report: markdown artifact, MLflow run with a metric per signal and the HTML report;
       a `flywheel.drift.alert` Prefect event when any signal alerts
    5. with `drift.trigger_flywheel`, input drift starts the flywheel's first stage (harvest)
    """
    settings = load_params()
    params = override(settings.drift, current_hours=current_hours, baseline_days=baseline_days)
    env = Environment()
    windows = drift_windows(window_end(end), params)
    current, baseline = load_windows(env.request_log_uri, windows, application, version)
    result = drift_signals(current, baseline, params, env.home)
    run_id = report(env.tracking_uri, settings.project.experiment, result, current, baseline, windows, params)
    if params.trigger_flywheel and result.input_drift:
        trigger_flywheel()
    return {"status": result.status, "alerting": sorted(result.alerting), "run_id": run_id}
