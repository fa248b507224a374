"""The regression flow on the real stack: an unchanged champion passes, a swapped-in bad adapter is caught."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from flywheel.settings import PROJECT_ROOT, Environment, load_params
from tasks.evaluate.run_eval import evaluate_model, load_eval_items
from tasks.evaluate.safety import load_suite
from tasks.regression import as_version_scores, suite_scores

pytestmark = pytest.mark.integration

ITEMS = 3
PROBES = 1
MAX_NEW_TOKENS = 24  # enough to tell a right answer from noise; keeps three replays short on 2 cores


@pytest.fixture
def regression_params(stack: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A params file of our own: a model name no other test uses, and a small fixed suite."""
    from flywheel.demo.workload import regression_suite

    suite = tmp_path / "regression.jsonl"
    suite.write_text("".join(case.model_dump_json() + "\n" for case in regression_suite()[:ITEMS]))
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["project"]["registered_model"] = f"regression-test-{uuid.uuid4().hex[:8]}"
    raw["regression"]["suite"] = str(suite)  # absolute: the data dir join keeps it as it is
    raw["evaluate"]["max_new_tokens"] = MAX_NEW_TOKENS
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(path))
    monkeypatch.setenv("PREFECT_API_URL", stack.api_url)
    yield path


def _save_adapter(out: Path, degrade: bool) -> Path:
    """A LoRA adapter for SmolLM2: as initialised (B = 0, the base model's answers) or with random B."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from flywheel.runtime.llm import load_chat_model

    base = load_chat_model(load_params().model)
    model = get_peft_model(
        copy.deepcopy(base.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    if degrade:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    model.save_pretrained(str(out))
    return out


def test_a_degraded_adapter_swapped_under_the_champion_is_caught(
    stack: Environment, mlflow_uri: str, regression_params: Path, tmp_path: Path
) -> None:
    import mlflow

    import registry
    from flows.regression import regression
    from flywheel.runtime.llm import load_chat_model

    params = load_params()
    name = params.project.registered_model
    # given a champion whose gate recorded its regression-suite scores (as the evaluate flow does)
    good = _save_adapter(tmp_path / "good", degrade=False)
    with mlflow.start_run(run_name="regression-test-candidate") as run:
        mlflow.log_artifacts(str(good), artifact_path="adapter")
    chat = load_chat_model(params.model, adapter=good)
    items = load_eval_items(Path(params.regression.suite))
    at_gate = evaluate_model(
        chat, items, load_suite()[:PROBES], params.model.system_prompt, params.evaluate.max_new_tokens,
        params.gateway.prices["default"],
    )  # fmt: skip
    scores = as_version_scores(suite_scores(at_gate, params.regression.metrics))
    version = registry.register_model_version(
        name, f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id,
        tags={f"score.{key}": f"{value:.6g}" for key, value in scores.items()},
    )  # fmt: skip
    registry.set_alias(name, "champion", version.version)

    # when the regression flow checks it, unchanged
    first = regression(max_probes=PROBES)
    # then nothing alerts
    assert first["status"] == "ok", f"an unchanged champion alerted: {first}"

    # when its adapter is replaced by a degraded one under the same version, and the flow runs again
    bad = _save_adapter(tmp_path / "bad", degrade=True)
    mlflow.MlflowClient(mlflow_uri).log_artifacts(run.info.run_id, str(bad), artifact_path="adapter")
    second = regression(max_probes=PROBES)
    # then the primary metric alerts against both the gate and the recent runs
    assert second["status"] == "alert", f"a degraded champion passed: {second}"
    assert {"rougeL vs gate", "rougeL vs recent runs"} <= set(second["alerts"]), second

    # and both checks are points of the version's series run (a curve in the MLflow UI)
    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(params.project.experiment)
    assert experiment is not None, "the regression runs log to the project's experiment"
    (series,) = client.search_runs(
        [experiment.experiment_id],
        f"tags.`flywheel.stage` = 'regression' and tags.`flywheel.model` = '{name}'",
    )
    history = client.get_metric_history(series.info.run_id, "rougeL")
    assert [point.step for point in history] == [0, 1], f"one point per check: {history}"
    assert history[1].value < history[0].value, f"the curve shows the drop: {history}"
    assert series.data.tags["flywheel.last_status"] == "alert", series.data.tags
