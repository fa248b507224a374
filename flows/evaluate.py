"""evaluate: the gate between a candidate and the champion (or the base model), then registration."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flywheel.settings import Environment, load_params
from tasks.evaluate.run_eval import load_eval_items
from tasks.evaluate.safety import load_suite
from tasks.evaluate.tasks import (
    load_baseline,
    load_candidate,
    load_prompt_candidate,
    record,
    run_gate,
    run_suite,
    served_system_prompt,
)
from tasks.regression.tasks import reference_scores


@flow(name="evaluate", log_prints=True)
def evaluate(
    candidate_run_id: str,
    candidate: Literal["adapter", "prompt"] = "adapter",
    max_items: int | None = None,
    max_probes: int | None = None,
) -> dict[str, object]:
    """Judge a retrain run's candidate against the champion on the same items and probes.

    `candidate=adapter` gates the run's LoRA adapter (served with the current prompt);
    `candidate=prompt` gates the run's prompt candidate (on the champion model).
    `max_items` / `max_probes` cut the suite for a smoke run (the gate then has little power).

    1. read params (`evaluate`, `model`) and where things run; load the eval items and safety probes
    2. load the baseline (champion, or the base model when there is none) with the served prompt,
       and the candidate: the adapter on the base model, or the baseline model with the new prompt
    3. both answer every item and probe; per-item scores, ops figures, probe results
    4. the gate: paired bootstrap CIs, win rate, rules from params (markdown artifact)
    5. a passing candidate also answers the fixed regression suite: its scores (and safety) are
       the reference the nightly regression run of this version compares with
    6. log the decision, per-item table, plots and model card to the candidate's run, and register
       it (model or prompt version): `challenger` with `flywheel.approval=pending` if it passed,
       `flywheel.gate=failed` if not
    """
    params = load_params()
    env = Environment()
    items = load_eval_items(env.data_dir / params.evaluate.eval_suite)[:max_items]
    probes = load_suite()[:max_probes]
    cache = env.home / "adapters"
    served, served_name = served_system_prompt(env.tracking_uri, params.project.prompt_name, params.model)
    baseline_model = params.model.model_copy(update={"system_prompt": served})
    baseline_chat, baseline_name = load_baseline(
        params.model, env.tracking_uri, params.project.registered_model, cache
    )
    if candidate == "prompt":
        prompt = (params.project.prompt_name, load_prompt_candidate(env.tracking_uri, candidate_run_id))
        candidate_model, candidate_chat = (
            params.model.model_copy(update={"system_prompt": prompt[1]}),
            baseline_chat,
        )
        baseline_name = f"{baseline_name} + {served_name}"
    else:
        prompt, candidate_model = None, baseline_model
        candidate_chat = load_candidate(params.model, candidate_run_id, cache)
    price = params.gateway.prices["default"]
    baseline = run_suite(baseline_chat, items, probes, baseline_model, params.evaluate, price)
    scored = run_suite(candidate_chat, items, probes, candidate_model, params.evaluate, price)
    decision = run_gate(scored, baseline, params.evaluate)
    suite = env.data_dir / params.regression.suite
    regression_items = load_eval_items(suite)[:max_items] if decision.passed and suite.is_file() else []
    reference = reference_scores(
        candidate_chat, regression_items, scored.safety, candidate_model, params.evaluate,
        params.regression, price,
    )  # fmt: skip
    version = record(
        env.tracking_uri, candidate_run_id, params.project.registered_model, params.model,
        params.project.application, scored, baseline, baseline_name, decision, params.evaluate,
        reference, prompt,
    )  # fmt: skip
    return {
        "passed": decision.passed,
        "failed_rules": decision.failed_rules,
        "version": version,
        "kind": candidate,
    }
