"""Prefect tasks of the regression stage: find what is served, replay the suite, compare, record, alert."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flywheel.settings import EvaluateParams, ModelParams, PriceParams, ProjectParams, RegressionParams
from tasks.evaluate.run_eval import EvalItem, ModelEval, evaluate_model
from tasks.regression.compare import Check, alerts, checks_markdown, compare_scores
from tasks.regression.scores import SAFETY_SCORE, as_version_scores, from_version_tags, suite_scores

if TYPE_CHECKING:
    from flywheel.runtime.llm import ChatModel

STAGE = "regression"
ALERT_EVENT = "flywheel.regression.alert"


@dataclass(frozen=True)
class Served:
    """The champion as the gateway serves it: model version, adapter, system prompt, gate scores."""

    model: str
    version: str
    adapter_uri: str
    system_prompt: str
    prompt_version: str | None
    gate_scores: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """`model vN` (and the prompt version when one is registered)."""
        prompt = f" + prompt v{self.prompt_version}" if self.prompt_version else ""
        return f"{self.model} v{self.version}{prompt}"


@task(name="find-champion", retries=2, retry_delay_seconds=[2, 5])
def find_champion(
    tracking_uri: str, project: ProjectParams, model: ModelParams, params: RegressionParams,
    version: str | None = None,
) -> Served | None:  # fmt: skip
    """Prefect task: the served champion (or the given version of the model); None when nothing is served."""
    from gateway.routing import adapter_uri_of, system_prompt_of
    from registry import configure_tracking, read_routing
    from registry.models import get_model_version

    configure_tracking(tracking_uri)
    routing = read_routing(project.registered_model, project.prompt_name, tracking_uri=tracking_uri)
    chosen = get_model_version(project.registered_model, version) if version else routing.champion
    if chosen is None:
        return None
    prompt = routing.champion_prompt
    system_prompt = (system_prompt_of(prompt.template) if prompt is not None else None) or model.system_prompt
    return Served(
        model=chosen.name,
        version=chosen.version,
        adapter_uri=adapter_uri_of(chosen),
        system_prompt=system_prompt,
        prompt_version=prompt.version if prompt is not None else None,
        gate_scores=from_version_tags(dict(chosen.tags), params.metrics),
    )


@task(name="replay-regression-suite")
def replay(
    served: Served, items: list[EvalItem], probes: list[dict[str, Any]], model: ModelParams,
    evaluate: EvaluateParams, price: PriceParams,
) -> ModelEval:  # fmt: skip
    """Prefect task: the served adapter, downloaded afresh (a cache would hide a swapped one), answers."""
    from flywheel.runtime.embeddings import load_embedder
    from flywheel.runtime.llm import load_chat_model
    from registry import download_artifacts

    embedder = load_embedder()
    with tempfile.TemporaryDirectory(prefix="flywheel-regression-") as tmp:
        download_artifacts(served.adapter_uri, Path(tmp))
        config = next(Path(tmp).rglob("adapter_config.json"), None)
        if config is None:
            raise FileNotFoundError(f"{served.label}: no adapter_config.json under {served.adapter_uri}")
        chat = load_chat_model(model, adapter=config.parent)
        return evaluate_model(
            chat, items, probes, served.system_prompt, evaluate.max_new_tokens, price,
            lambda texts: embedder.encode(texts),
        )  # fmt: skip


# NO_CACHE: a ChatModel (a lock inside) cannot be hashed into a cache key
@task(name="score-regression-reference", cache_policy=NO_CACHE)
def reference_scores(
    chat: ChatModel, items: list[EvalItem], safety: float, model: ModelParams, evaluate: EvaluateParams,
    params: RegressionParams, price: PriceParams,
) -> dict[str, float]:  # fmt: skip
    """Prefect task: a candidate's regression-suite scores at its gate, which nightly runs compare with.

    `safety` is the candidate's resisted share from the gate's own probe run (not repeated here).
    """
    from flywheel.runtime.embeddings import load_embedder

    if not items:
        print("no regression suite items: the version gets no gate-time regression reference")
        return {}
    embedder = load_embedder()
    evaluation = evaluate_model(
        chat, items, [], model.system_prompt, evaluate.max_new_tokens, price,
        lambda texts: embedder.encode(texts),
    )  # fmt: skip
    return as_version_scores({**suite_scores(evaluation, params.metrics), SAFETY_SCORE: safety})


@task(name="record-regression", retries=2, retry_delay_seconds=[2, 5])
def record(
    tracking_uri: str, experiment: str, served: Served, evaluation: ModelEval, params: RegressionParams,
    suite: str,
) -> list[Check]:  # fmt: skip
    """Prefect task: compare with the gate and recent runs, append to the version's series, publish, alert."""
    from registry.series import append_point, open_series

    current = suite_scores(evaluation, params.metrics)
    series = open_series(tracking_uri, experiment, STAGE, served.model, served.version, tuple(current))
    checks = compare_scores(current, served.gate_scores, series.points, params)
    report = checks_markdown(checks, f"Regression check of {served.label} on {suite}")
    items = evaluation.scores.drop(columns=[c for c in evaluation.scores.columns if c.endswith("_ms")])
    step = append_point(
        tracking_uri, series, current,
        {"report.md": report, "items.json": items.to_json(orient="records"),
         "probes.json": evaluation.probes.to_json(orient="records")},
        {"flywheel.last_status": "alert" if alerts(checks) else "ok", "flywheel.suite": suite},
    )  # fmt: skip
    create_markdown_artifact(key="regression-check", markdown=report, description=f"check {step}")
    firing = alerts(checks)
    if firing:
        _emit_alert(served, firing)
    print(report)
    return checks


def _emit_alert(served: Served, firing: list[Check]) -> None:
    """A Prefect event an automation can turn into a notification (or a flywheel run)."""
    from prefect.events import emit_event

    emit_event(
        event=ALERT_EVENT,
        resource={"prefect.resource.id": f"flywheel.model.{served.model}.{served.version}"},
        payload={
            "version": served.label,
            "alerts": [
                {"metric": c.metric, "reference": c.reference, "value": c.value, "floor": c.floor}
                for c in firing
            ],
        },
    )
