"""The embedded MLflow server: health, the model registry and the prompt registry with aliases."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

import registry

pytestmark = pytest.mark.integration


def test_mlflow_answers_health(mlflow_uri: str) -> None:
    with urllib.request.urlopen(f"{mlflow_uri}/health", timeout=5) as response:
        assert response.status == 200, f"/health answered {response.status}"
    registry.ping(mlflow_uri)  # raises when unreachable


def test_ping_names_the_server_when_unreachable() -> None:
    with pytest.raises(registry.RegistryUnavailableError, match=r"127\.0\.0\.1:9"):
        registry.ping("http://127.0.0.1:9", timeout_s=1)


def test_model_version_with_aliases_and_tags(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    # given two runs, each logging an adapter folder as an artifact
    versions = []
    for rank in (8, 16):
        adapter = tmp_path / f"adapter-r{rank}"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
        with mlflow.start_run(run_name=f"lora-r{rank}") as run:
            mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        # when each is registered as a version of the application model
        versions.append(
            registry.register_model_version(
                "flywheel-test-model",
                f"runs:/{run.info.run_id}/adapter",
                run_id=run.info.run_id,
                tags={"approval": "pending", "git_sha": "abc123"},
            )
        )
    first, second = versions
    registry.set_alias("flywheel-test-model", "champion", first.version)
    registry.set_alias("flywheel-test-model", "challenger", second.version)
    registry.set_version_tags("flywheel-test-model", second.version, {"gate": "passed"})

    # then aliases resolve to the right versions and tags carry the flywheel. prefix
    champion = registry.get_version_by_alias("flywheel-test-model", "champion")
    challenger = registry.get_version_by_alias("flywheel-test-model", "challenger")
    assert champion.version == first.version, f"champion should be v{first.version}: {champion}"
    assert challenger.version == second.version, f"challenger should be v{second.version}: {challenger}"
    assert challenger.tags.get("flywheel.gate") == "passed", f"tags: {challenger.tags}"
    assert challenger.tags.get("flywheel.approval") == "pending", f"tags: {challenger.tags}"
    assert "champion" in champion.aliases, f"aliases: {champion.aliases}"
    # and the registered artifact is really there
    local = mlflow.artifacts.download_artifacts(
        "models:/flywheel-test-model@challenger", dst_path=str(tmp_path / "dl")
    )
    config = json.loads((Path(local) / "adapter_config.json").read_text())
    assert config["r"] == 16, f"challenger artifact should be the r=16 adapter: {config}"
    with pytest.raises(registry.AliasNotFoundError):
        registry.get_version_by_alias("flywheel-test-model", "previous")
    with pytest.raises(ValueError, match="unknown alias"):
        registry.set_alias("flywheel-test-model", "production", first.version)


def test_prompt_versions_with_aliases(mlflow_uri: str) -> None:
    # given two versions of a chat prompt
    v1 = registry.register_prompt(
        "flywheel-test-prompt",
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "{{question}}"}],
        commit_message="v1",
    )
    v2 = registry.register_prompt(
        "flywheel-test-prompt",
        [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "{{question}}"},
        ],
        commit_message="shorter answers",
        tags={"source": "test"},
    )
    # when aliases point at them
    registry.set_prompt_alias("flywheel-test-prompt", "champion", v1.version)
    registry.set_prompt_alias("flywheel-test-prompt", "challenger", v2.version)
    # then each alias loads its own template
    champion = registry.load_prompt("flywheel-test-prompt", "champion")
    challenger = registry.load_prompt("flywheel-test-prompt", "challenger")
    assert champion.version == v1.version and challenger.version == v2.version, (champion, challenger)
    assert "one sentence" in json.dumps(challenger.template), f"challenger template: {challenger.template}"
    with pytest.raises(registry.AliasNotFoundError):
        registry.load_prompt("flywheel-test-prompt", "previous")


def test_candidates_passing_and_failing_the_gate(mlflow_uri: str) -> None:
    import mlflow

    with mlflow.start_run(run_name="candidate") as run:
        mlflow.log_text("adapter", "adapter/README.md")
    source = f"runs:/{run.info.run_id}/adapter"
    lineage = {"dvc.data/curated/train.jsonl": "abc123", "git_sha": "deadbeef", "parent_version": "base"}
    # when one candidate passed the gate and another failed it
    passed = registry.register_candidate(
        "flywheel-test-candidates", source, run.info.run_id, passed=True, failed_rules=[],
        lineage=lineage, scores={"rougeL": 0.71}, description="LoRA r16",
    )  # fmt: skip
    failed = registry.register_candidate(
        "flywheel-test-candidates", source, run.info.run_id, passed=False,
        failed_rules=["superiority", "safety"], lineage=lineage, scores={"rougeL": 0.12},
        description="shuffled answers",
    )  # fmt: skip
    # then the passing one is the challenger, pending approval, with its lineage
    challenger = registry.get_version_by_alias("flywheel-test-candidates", "challenger")
    assert challenger.version == passed.version, f"the passing candidate is the challenger: {challenger}"
    assert challenger.tags[registry.APPROVAL_TAG] == "pending", challenger.tags
    assert challenger.tags["flywheel.dvc.data/curated/train.jsonl"] == "abc123", challenger.tags
    assert challenger.tags["flywheel.score.rougeL"] == "0.71", challenger.tags
    # and the failing one is on record with its reasons, without an alias or approval request
    assert failed.tags[registry.GATE_TAG] == "failed", failed.tags
    assert failed.tags["flywheel.gate_failed_rules"] == "superiority,safety", failed.tags
    assert not failed.aliases and registry.APPROVAL_TAG not in failed.tags, failed
