"""Prefect tasks of the evaluate flow: load the two models, run the suite, gate, record, register."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flywheel.runtime.llm import ChatModel, generation_dtype, load_chat_model
from flywheel.settings import EvaluateParams, ModelParams, PriceParams
from tasks.evaluate.gate import GateDecision, ci_plot, score_distribution_plot
from tasks.evaluate.model_card import dtype_note, model_card
from tasks.evaluate.run_eval import EvalItem, ModelEval, evaluate_model, gate


def adapter_model(model: ModelParams, uri: str | None, cache: Path) -> tuple[ChatModel, str]:
    """The base model plus the adapter at `uri` (downloaded once), or the base model for None."""
    if uri is None:
        return load_chat_model(model), "base"
    from registry import download_artifacts

    target = cache / uri.replace(":/", "_").replace("/", "_")
    if not target.exists():
        download_artifacts(uri, target)
    config = next(target.rglob("adapter_config.json"))
    return load_chat_model(model, adapter=config.parent), uri


@task(name="load-baseline")
def load_baseline(
    model: ModelParams, tracking_uri: str, registered_model: str, cache: Path
) -> tuple[ChatModel, str]:
    """Prefect task: the champion (base + its adapter), or the base model when there is none yet."""
    from registry import AliasNotFoundError, configure_tracking, get_version_by_alias

    # explicit: MLflow's default registry (./mlflow.db) would silently be another registry
    configure_tracking(tracking_uri)

    try:
        champion = get_version_by_alias(registered_model, "champion")
    except AliasNotFoundError:
        print("no champion yet: the base model is the baseline")
        return load_chat_model(model), "base"
    chat, _ = adapter_model(model, champion.source, cache)
    return chat, f"{registered_model} v{champion.version}"


@task(name="served-system-prompt", retries=2, retry_delay_seconds=[2, 5])
def served_system_prompt(tracking_uri: str, prompt_name: str, model: ModelParams) -> tuple[str, str]:
    """Prefect task: the system prompt the gateway serves (the champion prompt, else params) and its label."""
    from gateway.routing import system_prompt_of
    from registry import AliasNotFoundError, configure_tracking, load_prompt

    configure_tracking(tracking_uri)
    try:
        champion = load_prompt(prompt_name, "champion")
    except AliasNotFoundError:
        return model.system_prompt, "params.yaml model.system_prompt"
    return system_prompt_of(
        champion.template
    ) or model.system_prompt, f"prompt {prompt_name} v{champion.version}"


@task(name="load-prompt-candidate", retries=2, retry_delay_seconds=[2, 5])
def load_prompt_candidate(tracking_uri: str, run_id: str) -> str:
    """Prefect task: the prompt candidate a retrain run built (`prompt_candidate/system_prompt.txt`)."""
    from registry import configure_tracking, download_artifacts
    from tasks.train.tasks import PROMPT_CANDIDATE

    configure_tracking(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        download_artifacts(f"runs:/{run_id}/{PROMPT_CANDIDATE}", Path(tmp))
        found = next(Path(tmp).rglob("*.txt"), None)
        if found is None:
            raise FileNotFoundError(
                f"run {run_id} has no {PROMPT_CANDIDATE}: retrain with train.prompt_examples > 0"
            )
        return found.read_text(encoding="utf-8")


@task(name="load-candidate")
def load_candidate(model: ModelParams, run_id: str, cache: Path) -> ChatModel:
    """Prefect task: the base model with the candidate's adapter from its training run."""
    return adapter_model(model, f"runs:/{run_id}/adapter", cache)[0]


# NO_CACHE: a ChatModel (a lock inside) cannot be hashed into a cache key
@task(name="run-eval-suite", cache_policy=NO_CACHE)
def run_suite(
    chat: ChatModel, items: list[EvalItem], probes: list[dict[str, Any]], model: ModelParams,
    params: EvaluateParams, price: PriceParams,
) -> ModelEval:  # fmt: skip
    """Prefect task: answer every eval item and safety probe with `chat`, scored."""
    from flywheel.runtime.embeddings import load_embedder

    embedder = load_embedder()
    return evaluate_model(
        chat, items, probes, model.system_prompt, params.max_new_tokens, price,
        lambda texts: embedder.encode(texts),
    )  # fmt: skip


@task(name="gate")
def run_gate(candidate: ModelEval, baseline: ModelEval, params: EvaluateParams) -> GateDecision:
    """Prefect task: the gate's decision, published as a markdown artifact."""
    decision = gate(candidate, baseline, params)
    create_markdown_artifact(key="gate-decision", markdown=decision.markdown())
    print(f"gate {'PASSED' if decision.passed else 'FAILED: ' + ', '.join(decision.failed_rules)}")
    return decision


@task(name="record-evaluation", retries=2, retry_delay_seconds=[2, 5])
def record(
    tracking_uri: str, run_id: str, registered_model: str, model: ModelParams, application: str,
    candidate: ModelEval, baseline: ModelEval, baseline_name: str, decision: GateDecision,
    params: EvaluateParams, reference_scores: Mapping[str, float] | None = None,
    prompt: tuple[str, str] | None = None,
) -> str:  # fmt: skip
    """Prefect task: log the evaluation into the candidate's run, then register the candidate.

    `reference_scores` (e.g. the regression suite's) are logged and kept on the version as scores.
    With `prompt` (prompt name, candidate text) the candidate is that prompt: its evaluation goes
    under `evaluation-prompt/` and it is registered as a prompt version instead of a model version.
    """
    from registry import configure_tracking, register_candidate
    from registry.candidates import register_prompt_candidate
    from registry.runs import log_to_run, run_tags

    configure_tracking(tracking_uri)

    tags = run_tags(tracking_uri, run_id)
    lineage = {
        key.removeprefix("flywheel."): value for key, value in tags.items() if key.startswith("flywheel.")
    }
    lineage["parent"] = baseline_name
    data = {key.removeprefix("dvc."): value for key, value in lineage.items() if key.startswith("dvc.")}
    what = f"prompt {prompt[0]!r}" if prompt else registered_model
    folder = "evaluation-prompt" if prompt else "evaluation"
    card = model_card(
        f"{what} candidate (run {run_id[:8]})", model.gguf_file or model.source,
        application, data, {"base": baseline_name}, decision, (candidate.safety, baseline.safety),
        ("no LLM-judge metrics: no judge endpoint configured",
         dtype_note(model.dtype, generation_dtype(model.dtype))),
    )  # fmt: skip
    metric = params.primary_metric
    means = {
        f"eval/{who}/{metric}": float(frame[metric].mean())
        for who, frame in (("baseline", baseline.scores), ("candidate", candidate.scores))
    }
    metrics = {**decision.metrics(), **means, **(reference_scores or {})}
    with tempfile.TemporaryDirectory() as tmp:
        plots = [
            score_distribution_plot(candidate.scores, baseline.scores, metric, Path(tmp) / "scores.png"),
            ci_plot(decision, Path(tmp) / "ci.png"),
        ]
        items = candidate.scores.merge(baseline.scores, on="item_id", suffixes=("_candidate", "_baseline"))
        log_to_run(
            tracking_uri, run_id,
            {(f"prompt/{k}" if prompt else k): v for k, v in metrics.items()},
            {f"{folder}/items.json": items, f"{folder}/probes.json": candidate.probes},
            plots, {f"{folder}/model_card.md": card, f"{folder}/gate.md": decision.markdown()},
            files_path=folder,
        )  # fmt: skip
    scores = {f"{metric}.mean": float(candidate.scores[metric].mean()), **(reference_scores or {})}
    if prompt is not None:
        lineage["run_id"] = run_id
        prompt_version = register_prompt_candidate(
            prompt[0], prompt[1], passed=decision.passed, failed_rules=decision.failed_rules, lineage=lineage,
            scores=scores, commit_message=card.splitlines()[0].lstrip("# "),
        )  # fmt: skip
        return prompt_version.version
    version = register_candidate(
        registered_model, f"runs:/{run_id}/adapter", run_id, passed=decision.passed,
        failed_rules=decision.failed_rules, lineage=lineage, scores=scores, description=card.splitlines()[0],
    )  # fmt: skip
    return version.version
