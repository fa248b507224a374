"""The embedded stack as a user drives it: deployments listed, a run from the CLI, status, down."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.deployments import DEPLOYMENTS
from flywheel.settings import Environment, load_params
from tests.helpers.prefect_cli import prefect as _prefect

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def test_every_flow_has_a_deployment_with_its_schedule(stack: Environment) -> None:
    # when the deployments are listed against the running server
    result = _prefect(stack, "deployment", "ls")
    assert result.returncode == 0, f"prefect deployment ls failed: {result.stderr}"
    params = load_params()
    for spec in DEPLOYMENTS:
        # then each declared deployment is there, with the schedule params.yaml gives it
        assert spec.full_name in result.stdout, f"{spec.full_name} missing from:\n{result.stdout}"
        inspected = _prefect(stack, "deployment", "inspect", spec.full_name)
        assert inspected.returncode == 0, f"inspect failed: {inspected.stderr}"
        cron = spec.schedule(params)
        if cron is None:
            assert "'cron'" not in inspected.stdout, f"{spec.full_name} should have no schedule"
        else:
            assert cron in inspected.stdout, f"{spec.full_name} should run on {cron!r}:\n{inspected.stdout}"


def test_seed_demo_runs_from_the_cli_as_the_ui_would(stack: Environment) -> None:
    # when seed-demo is started through its deployment, with a parameter, and watched to the end
    result = _prefect(
        stack,
        "deployment",
        "run",
        "seed-demo/on-demand",
        "-p",
        "n_records=400",
        "-p",
        "seed=7",
        "--watch",
        "--watch-timeout",
        "240",
    )
    assert result.returncode == 0, f"deployment run failed:\n{result.stdout}\n{result.stderr}"
    assert "Completed" in result.stdout, f"the run should complete:\n{result.stdout}"
    # then its output exists where harvest reads it, with the records asked for
    history = stack.data_dir / "incoming" / "demo-history-seed7.jsonl"
    assert history.exists(), f"history not written at {history}"
    lines = history.read_bytes().splitlines()
    assert len(lines) >= 400, f"expected at least 400 log lines, got {len(lines)}"
    assert (stack.data_dir / "demo" / "eval.jsonl").exists(), "the eval set should be written"


def test_status_json_reports_every_service_healthy(stack: Environment) -> None:
    result = subprocess.run(
        [str(BIN / "flywheel"), "status", "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"status should exit 0 when healthy:\n{result.stdout}{result.stderr}"
    payload = json.loads(result.stdout)
    services = {s["name"]: s for s in payload["services"]}
    assert set(services) == {"prefect", "mlflow", "runner", "gateway"}, f"services: {sorted(services)}"
    assert all(s["healthy"] for s in services.values()), f"all should be healthy: {services}"
    assert payload["healthy"] is True, payload


def test_harvest_runs_from_the_cli_over_the_seeded_history(stack: Environment) -> None:
    # given the demo history seeded by the previous test (seed 7, 400 records, into the inbox)
    history = stack.data_dir / "incoming" / "demo-history-seed7.jsonl"
    assert history.exists(), "seed-demo should have written the history first"
    # when harvest runs through its deployment over the JSONL files
    result = _prefect(
        stack,
        "deployment",
        "run",
        "harvest/on-demand",
        "-p",
        "source=files",
        "--watch",
        "--watch-timeout",
        "240",
    )
    assert result.returncode == 0 and "Completed" in result.stdout, (
        f"harvest failed:\n{result.stdout}\n{result.stderr}"
    )
    # then a raw partition and a quarantine partition exist, and together hold every history line
    raw = stack.data_dir / "raw"
    kept = sum(len(p.read_bytes().splitlines()) for p in raw.glob("part-*.jsonl"))
    quarantined = sum(len(p.read_bytes().splitlines()) for p in (raw / "quarantine").glob("part-*.jsonl"))
    total = len([line for line in history.read_bytes().split(b"\n") if line.strip()])
    assert kept > 0 and quarantined > 0, f"expected kept and quarantined records: {kept}, {quarantined}"
    assert kept + quarantined == total, f"every line accounted for: {kept} + {quarantined} != {total}"


def test_curate_runs_from_the_cli_and_records_its_funnel(stack: Environment, mlflow_uri: str) -> None:
    # given the partitions harvested by the previous test
    assert list((stack.data_dir / "raw").glob("part-*.jsonl")), "harvest should have run first"
    # when curate runs through its deployment
    result = _prefect(stack, "deployment", "run", "curate/on-demand", "--watch", "--watch-timeout", "400")
    assert result.returncode == 0 and "Completed" in result.stdout, (
        f"curate failed:\n{result.stdout}\n{result.stderr}"
    )
    # then the splits and the funnel are written, and the books balance
    curated = stack.data_dir / "curated"
    funnel = json.loads((curated / "funnel.json").read_text())
    assert funnel["records_out"] > 0, f"some records should be kept: {funnel}"
    assert funnel["records_in"] == funnel["records_out"] + sum(funnel["dropped"].values()), funnel
    assert sum(funnel["splits"].values()) == funnel["records_out"], funnel
    train = (curated / "train.jsonl").read_bytes().splitlines()
    assert len(train) == funnel["splits"]["train"], "train.jsonl holds the train split"
    # and the run is in MLflow with the funnel as metrics
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(load_params().project.experiment)
    assert experiment is not None, "the curate flow should log to the project's experiment"
    runs = client.search_runs([experiment.experiment_id], "tags.`flywheel.stage` = 'curate'")
    assert runs, "an MLflow run tagged flywheel.stage=curate"
    assert runs[0].data.metrics["records_out"] == funnel["records_out"], runs[0].data.metrics


def test_a_gx_failure_stops_curate_before_anything_is_written(stack: Environment) -> None:
    # given a raw partition with a record in a forbidden role, next to the good ones
    raw = stack.data_dir / "raw"
    good = next(raw.glob("part-*.jsonl")).read_bytes().splitlines()[0]
    record = json.loads(good)
    record["request_id"] = "forbidden-role-record"
    record["messages"] = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "content": "rm -rf"},
        *record["messages"],
    ]
    bad = raw / "part-zz-forbidden-role.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    curated = stack.data_dir / "curated"
    before = {p.name: p.read_bytes() for p in curated.iterdir()}
    try:
        # when curate runs
        result = _prefect(stack, "deployment", "run", "curate/on-demand", "--watch", "--watch-timeout", "400")
        # then the flow fails in its raw validation, naming the expectation, and writes nothing
        assert "finished in state 'Failed'" in result.stdout, f"curate should fail:\n{result.stdout}"
        assert "validate-raw" in result.stdout, (
            f"the raw validation task should be the one failing:\n{result.stdout}"
        )
        run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", result.stdout)
        assert run_id, f"no flow run id in:\n{result.stdout}"
        logs = _prefect(stack, "flow-run", "logs", run_id.group(1))
        assert "expect_column_values_to_match_regex(roles)" in logs.stdout, (
            f"the error should name the failed expectation:\n{logs.stdout[-3000:]}"
        )
        assert "data docs" in logs.stdout, "the error should point at the data docs"
        after = {p.name: p.read_bytes() for p in curated.iterdir()}
        assert after == before, "no curated file may change when validation fails"
    finally:
        bad.unlink()


def test_retrain_then_evaluate_register_a_candidate_with_its_verdict(
    stack: Environment, mlflow_uri: str, tmp_path: Path
) -> None:
    # given the curated splits written by the curate test: a 2-step LoRA run on the real SmolLM2
    result = _prefect(
        stack, "deployment", "run", "retrain/on-demand", "-p", "max_steps=2",
        "--watch", "--watch-timeout", "500", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and "Completed" in result.stdout, f"retrain failed:\n{result.stdout}"
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(load_params().project.experiment)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.`flywheel.stage` = 'retrain'", max_results=1
    )
    assert any(key.startswith("flywheel.dvc.") for key in run.data.tags), f"data hashes: {run.data.tags}"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2, "a loss point per step"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_config.json" in artifacts, f"the adapter is logged: {artifacts}"
    # when the candidate is gated on a few items and probes (a smoke run: the base model is the baseline)
    result = _prefect(
        stack, "deployment", "run", "evaluate/on-demand", "-p", f"candidate_run_id={run.info.run_id}",
        "-p", "max_items=4", "-p", "max_probes=2", "--watch", "--watch-timeout", "500", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and "Completed" in result.stdout, f"evaluate failed:\n{result.stdout}"
    # then the evaluation is in the candidate's run and the version carries the verdict
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/model_card.md", "evaluation/items.json", "evaluation/scores.png"} <= logged, logged
    card = Path(
        client.download_artifacts(run.info.run_id, "evaluation/model_card.md", str(tmp_path))
    ).read_text()
    assert re.search(r"answers generated in (bfloat16|float32) \(model\.dtype", card), (
        f"the card names the dtype the answers were generated in:\n{card}"
    )
    name = load_params().project.registered_model
    versions = client.search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if v.run_id == run.info.run_id]
    assert len(mine) == 1, (
        f"one version of {name} from run {run.info.run_id}: {[(v.version, v.run_id) for v in versions]}"
    )
    (version,) = mine
    assert version.tags["flywheel.gate"] in {"passed", "failed"}, version.tags
    if version.tags["flywheel.gate"] == "failed":
        assert version.tags["flywheel.gate_failed_rules"], "a failed candidate names its failed rules"
        assert not version.aliases, "a failed candidate gets no alias"
    else:
        # a passing one carries its regression-suite scores: the nightly run's reference
        for key in (
            "flywheel.score.regression.rougeL",
            "flywheel.score.regression.fact_hit",
            "flywheel.score.safety",
        ):
            assert key in version.tags, f"the passed candidate lacks {key}: {version.tags}"


def test_the_prompt_candidate_of_that_run_is_gated_and_registered_as_a_prompt_version(
    stack: Environment, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(load_params().project.experiment)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.`flywheel.stage` = 'retrain'", max_results=1
    )
    # given the few-shot prompt candidate the retrain run logged beside its adapter
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "prompt_candidate")}
    assert "prompt_candidate/system_prompt.txt" in logged, f"retrain logs its prompt candidate: {logged}"
    # when the evaluate flow gates the prompt (a smoke run) through its deployment
    result = _prefect(
        stack, "deployment", "run", "evaluate/on-demand", "-p", f"candidate_run_id={run.info.run_id}",
        "-p", "candidate=prompt", "-p", "max_items=4", "-p", "max_probes=2",
        "--watch", "--watch-timeout", "500", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and "Completed" in result.stdout, f"evaluate failed:\n{result.stdout}"
    # then its evaluation sits apart from the adapter's, and a prompt version carries the verdict
    evaluated = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation-prompt")}
    assert "evaluation-prompt/model_card.md" in evaluated, evaluated
    found = list(client.search_prompt_versions(load_params().project.prompt_name))
    versions = [v for v in found if v.tags.get("flywheel.run_id") == run.info.run_id]
    assert len(versions) == 1, f"one prompt version from run {run.info.run_id}: {found}"
    (version,) = versions
    assert version.tags["flywheel.gate"] in {"passed", "failed"}, version.tags
    assert "Answers to common questions" in version.template, f"the few-shot template: {version.template}"


@pytest.mark.timeout(1800)  # a 40-step LoRA run and a 60-item gate on 2 cores
def test_a_candidate_trained_on_shuffled_answers_is_rejected_by_the_gate_and_gets_no_alias(
    stack: Environment, mlflow_uri: str
) -> None:
    import random

    from mlflow import MlflowClient

    params = load_params()
    client = MlflowClient(mlflow_uri)
    name = params.project.registered_model
    aliases_before = dict(client.get_registered_model(name).aliases)  # alias -> version
    # given a deliberately degraded train split: every question paired with a shuffled answer
    train = stack.data_dir / params.curate.curated_dir / "train.jsonl"
    original = train.read_bytes()
    records = [json.loads(line) for line in original.splitlines() if line.strip()]
    answers = [record["messages"][-1]["content"] for record in records]
    random.Random(0).shuffle(answers)
    for record, answer in zip(records, answers, strict=True):
        record["messages"][-1]["content"] = answer
    try:
        train.write_text("".join(json.dumps(record) + "\n" for record in records))
        # when it is fine-tuned long enough to learn the answers' style (40 steps) and gated
        result = _prefect(
            stack, "deployment", "run", "retrain/on-demand", "-p", "max_steps=40",
            "--watch", "--watch-timeout", "800", timeout=900,
        )  # fmt: skip
        assert result.returncode == 0 and "Completed" in result.stdout, f"retrain failed:\n{result.stdout}"
    finally:
        train.write_bytes(original)
    experiment = client.get_experiment_by_name(params.project.experiment)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.`flywheel.stage` = 'retrain'", max_results=1
    )
    result = _prefect(
        stack, "deployment", "run", "evaluate/on-demand", "-p", f"candidate_run_id={run.info.run_id}",
        "-p", "max_items=60", "-p", "max_probes=4", "--watch", "--watch-timeout", "800", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0 and "Completed" in result.stdout, f"evaluate failed:\n{result.stdout}"
    # then the gate rejects it on answer quality, names the rule, and no alias moves to it
    (version,) = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run.info.run_id]
    assert version.tags["flywheel.gate"] == "failed", f"a shuffled-answers candidate passed: {version.tags}"
    failed = version.tags["flywheel.gate_failed_rules"]
    assert {"superiority", "non_inferiority/fact_hit"} & set(failed.split(",")), (
        f"it should fail on quality (the primary metric or fact_hit), not only on operations: {failed}"
    )
    assert not client.get_model_version(name, version.version).aliases, "a rejected candidate gets no alias"
    after = dict(client.get_registered_model(name).aliases)
    assert after == aliases_before, "the gate's rejection moves no alias"


def test_a_flywheel_turn_chains_the_stages_and_a_turn_without_new_data_ends_early(
    stack: Environment, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    # when the nightly turn runs (small retrain and gate) over the data the earlier tests harvested
    result = _prefect(
        stack, "deployment", "run", "flywheel/nightly", "-p", "max_steps=2", "-p", "max_items=4",
        "-p", "max_probes=2", "--watch", "--watch-timeout", "900", timeout=1000,
    )  # fmt: skip
    assert result.returncode == 0 and "Completed" in result.stdout, f"the turn failed:\n{result.stdout}"
    # then it recorded the turn, and its retrain run's candidates were gated and registered
    state_file = stack.home / "flywheel" / "last_turn.json"
    state = json.loads(state_file.read_text())
    run_id = state["retrain_run_id"]
    client = MlflowClient(mlflow_uri)
    name = load_params().project.registered_model
    models = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    assert len(models) == 1, f"the turn's adapter is one version of {name}: {[v.run_id for v in models]}"
    prompts = list(client.search_prompt_versions(load_params().project.prompt_name))
    assert [v for v in prompts if v.tags.get("flywheel.run_id") == run_id], "the turn's prompt is gated too"

    # when the next turn finds no new data
    again = _prefect(stack, "deployment", "run", "flywheel/nightly", "--watch", "--watch-timeout", "300")
    # then it ends early as a success, says why, and leaves the last turn's record alone
    assert again.returncode == 0 and "Completed" in again.stdout, f"the early end failed:\n{again.stdout}"
    flow_run = re.search(r"/runs/flow-run/([0-9a-f-]{36})", again.stdout)
    assert flow_run, f"no flow run id in:\n{again.stdout}"
    logs = _prefect(stack, "flow-run", "logs", flow_run.group(1))
    assert "nothing to learn" in logs.stdout, f"the turn should say why it ended:\n{logs.stdout[-2000:]}"
    assert json.loads(state_file.read_text()) == state, "an early end records no new turn"
