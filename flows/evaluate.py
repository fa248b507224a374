"""evaluate: the gate between a candidate and the champion (or the base model), then registration."""

from __future__ import annotations

from prefect import flow

from flywheel.settings import Environment, load_params
from tasks.evaluate.run_eval import load_eval_items
from tasks.evaluate.safety import load_suite
from tasks.evaluate.tasks import load_baseline, load_candidate, record, run_gate, run_suite


@flow(name="evaluate", log_prints=True)
def evaluate(
    candidate_run_id: str, max_items: int | None = None, max_probes: int | None = None
) -> dict[str, object]:
    """Judge the LoRA candidate of a retrain run against the champion on the same items and probes.

    `max_items` / `max_probes` cut the suite for a smoke run (the gate then has little power).

    1. read params (`evaluate`, `model`) and where things run; load the eval items and safety probes
    2. load the baseline (champion, or the base model when there is none) and the candidate
    3. both answer every item and probe; per-item scores, ops figures, probe results
    4. the gate: paired bootstrap CIs, win rate, rules from params (markdown artifact)
    5. log the decision, per-item table, plots and model card to the candidate's run, and register
       it: `challenger` with `flywheel.approval=pending` if it passed, `flywheel.gate=failed` if not
    """
    params = load_params()
    env = Environment()
    items = load_eval_items(env.data_dir / params.evaluate.eval_suite)[:max_items]
    probes = load_suite()[:max_probes]
    cache = env.home / "adapters"
    baseline_chat, baseline_name = load_baseline(
        params.model, env.tracking_uri, params.project.registered_model, cache
    )
    candidate_chat = load_candidate(params.model, candidate_run_id, cache)
    price = params.gateway.prices["default"]
    baseline = run_suite(baseline_chat, items, probes, params.model, params.evaluate, price)
    candidate = run_suite(candidate_chat, items, probes, params.model, params.evaluate, price)
    decision = run_gate(candidate, baseline, params.evaluate)
    version = record(
        env.tracking_uri, candidate_run_id, params.project.registered_model, params.model,
        params.project.application, candidate, baseline, baseline_name, decision, params.evaluate,
    )  # fmt: skip
    return {"passed": decision.passed, "failed_rules": decision.failed_rules, "version": version}
