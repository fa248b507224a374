"""regression: the served champion replays the fixed regression suite and the safety probes, nightly."""

from __future__ import annotations

from prefect import flow

from flywheel.settings import Environment, load_params
from tasks.evaluate.run_eval import load_eval_items
from tasks.evaluate.safety import load_suite
from tasks.regression.tasks import find_champion, record, replay


@flow(name="regression", log_prints=True)
def regression(
    version: str | None = None, max_items: int | None = None, max_probes: int | None = None
) -> dict[str, object]:
    """Check that what is served still scores as it did at its gate and in its recent runs.

    `version` checks that version of the model instead of the champion;
    `max_items` / `max_probes` cut the suites for a smoke run.

    1. read params (`regression`, `evaluate`, `model`) and where things run; load the suites
    2. find the champion (model version, adapter, served system prompt, gate-time scores)
    3. download its adapter afresh and replay the regression suite and the safety probes
    4. compare each metric with the gate's score and the median of recent runs; append the
       scores to the version's series run in MLflow (a curve per metric); markdown artifact;
       a `flywheel.regression.alert` Prefect event when a metric falls below its floor
    """
    params = load_params()
    env = Environment()
    served = find_champion(env.tracking_uri, params.project, params.model, params.regression, version)
    if served is None:
        print("no champion is served yet: nothing to check")
        return {"status": "no_champion"}
    items = load_eval_items(env.data_dir / params.regression.suite)[:max_items]
    probes = load_suite()[:max_probes]
    evaluation = replay(
        served, items, probes, params.model, params.evaluate, params.gateway.prices["default"]
    )
    checks = record(
        env.tracking_uri, params.project.experiment, served, evaluation, params.regression,
        params.regression.suite,
    )  # fmt: skip
    firing = sorted({f"{c.metric} vs {c.reference}" for c in checks if c.status == "alert"})
    return {"status": "alert" if firing else "ok", "version": served.label, "alerts": firing}
