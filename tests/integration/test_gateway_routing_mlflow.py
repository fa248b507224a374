"""Gateway routing against a real MLflow server: aliases, canary tag, prompts, degraded mode, adapters."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import registry
from flywheel.settings import ModelParams, ProjectParams
from gateway.backends import MlflowAdapterResolver
from gateway.routing import RegistryRouteProvider

pytestmark = pytest.mark.integration

PROJECT = ProjectParams(registered_model="flywheel-routing-model", prompt_name="flywheel-routing-prompt")


def dead_uri() -> str:
    """An HTTP URI where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def versions(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> list[registry.ModelVersionInfo]:
    """Two registered versions, each a logged LoRA adapter folder (rank 4 and rank 8)."""
    import mlflow

    registered = []
    for rank in (4, 8):
        adapter = tmp_path_factory.mktemp(f"adapter-r{rank}")
        (adapter / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
        with mlflow.start_run(run_name=f"routing-lora-r{rank}") as run:
            mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        registered.append(
            registry.register_model_version(
                PROJECT.registered_model, f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id
            )
        )
    return registered


def test_provider_follows_aliases_canary_tag_and_prompts(
    mlflow_uri: str, versions: list[registry.ModelVersionInfo]
) -> None:
    # given v1 champion, v2 challenger tagged for a 30% canary, and a champion chat prompt
    first, second = versions
    registry.set_alias(PROJECT.registered_model, "champion", first.version)
    registry.set_alias(PROJECT.registered_model, "challenger", second.version)
    registry.set_version_tags(PROJECT.registered_model, second.version, {"canary_weight": "0.3"})
    p1 = registry.register_prompt(
        PROJECT.prompt_name,
        [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "{{q}}"}],
        commit_message="v1",
    )
    p2 = registry.register_prompt(PROJECT.prompt_name, "Answer with numbered steps.", commit_message="v2")
    registry.set_prompt_alias(PROJECT.prompt_name, "champion", p1.version)
    provider = RegistryRouteProvider(PROJECT, ModelParams(), poll_seconds=3600)

    # when the provider reads the registry
    table = provider.refresh_now()

    # then the table mirrors the aliases, the tag and the prompt
    assert provider.health()["registry"] == "ok", f"registry reachable: {provider.health()}"
    assert table.source == "registry", f"registered: {table}"
    assert table.champion.model_version == first.version, f"champion v{first.version}: {table.champion}"
    assert table.champion.adapter_uri == f"models:/{PROJECT.registered_model}/{first.version}", (
        f"{table.champion}"
    )
    assert table.champion.system_prompt == "Answer in one sentence.", (
        f"chat prompt's system: {table.champion}"
    )
    assert table.challenger is not None, f"challenger registered: {table}"
    assert table.challenger.model_version == second.version, (
        f"challenger v{second.version}: {table.challenger}"
    )
    assert table.challenger.prompt_version == p1.version, f"champion prompt on both arms: {table.challenger}"
    assert table.canary_weight == 0.3, f"weight from the tag: {table.canary_weight}"

    # and when the champion alias moves to v2 and the prompt alias to p2
    registry.set_alias(PROJECT.registered_model, "champion", second.version)
    registry.set_prompt_alias(PROJECT.prompt_name, "champion", p2.version)
    moved = provider.refresh_now()

    # then the next read reflects both moves (challenger == champion collapses into one arm)
    assert moved.champion.model_version == second.version, f"champion moved to v{second.version}: {moved}"
    assert moved.champion.prompt_version == p2.version, f"prompt moved to v{p2.version}: {moved.champion}"
    assert moved.champion.system_prompt == "Answer with numbered steps.", f"text prompt: {moved.champion}"
    assert moved.challenger is None, f"both aliases on one version means no split: {moved}"


def test_unreachable_registry_keeps_the_last_good_routes(
    mlflow_uri: str, versions: list[registry.ModelVersionInfo]
) -> None:
    # given a provider that has read the real registry once
    registry.set_alias(PROJECT.registered_model, "champion", versions[0].version)
    target = {"uri": mlflow_uri}
    provider = RegistryRouteProvider(
        PROJECT,
        ModelParams(),
        poll_seconds=3600,
        fetch=lambda model, prompt: registry.read_routing(model, prompt, tracking_uri=target["uri"]),
    )
    good = provider.refresh_now()
    assert good.source == "registry", f"first read succeeded: {provider.health()}"

    # when its MLflow becomes unreachable
    target["uri"] = dead_uri()
    kept = provider.refresh_now()

    # then it keeps serving the last good table and reports degraded with the reason
    health = provider.health()
    assert kept is good, f"the last good table is kept: {kept}"
    assert health["registry"] == "degraded", f"degraded: {health}"
    assert target["uri"].rsplit(":", 1)[1] in str(health["error"]), f"the error names the server: {health}"
    assert health["last_success"] == good.fetched_at, f"last success is the good read: {health}"


def test_nothing_registered_reads_as_the_default_table(mlflow_uri: str) -> None:
    # given names nothing was ever registered under
    project = ProjectParams(
        registered_model="flywheel-routing-nothing", prompt_name="flywheel-routing-nothing"
    )
    provider = RegistryRouteProvider(project, ModelParams(), poll_seconds=3600)

    # when the provider reads the registry
    table = provider.refresh_now()

    # then it serves the base model, and the registry counts as healthy
    assert table.source == "default", f"default table: {table}"
    assert provider.health()["registry"] == "ok", f"reachable and empty is ok: {provider.health()}"


def test_adapter_resolver_downloads_a_registered_adapter(
    mlflow_uri: str, versions: list[registry.ModelVersionInfo], tmp_path: Path
) -> None:
    # given a route to the registered r=8 adapter (v2)
    second = versions[1]
    provider = RegistryRouteProvider(PROJECT, ModelParams(), poll_seconds=3600)
    registry.set_alias(PROJECT.registered_model, "champion", second.version)
    route = provider.refresh_now().champion
    resolver = MlflowAdapterResolver(tmp_path / "adapters")

    # when the resolver fetches it (twice)
    folder = resolver(route)
    again = resolver(route)

    # then the adapter lands under <cache>/<model>/<version> and is reused
    assert folder is not None, f"an adapter route resolves to a folder: {route}"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 8, f"the r=8 adapter of v{second.version}: {config}"
    assert folder.is_relative_to(tmp_path / "adapters" / PROJECT.registered_model / second.version), (
        f"{folder}"
    )
    assert again == folder, f"cached on disk: {again}"


def test_download_of_a_missing_version_is_a_registry_error(mlflow_uri: str, tmp_path: Path) -> None:
    # given a model version that does not exist; when it is downloaded
    with pytest.raises(registry.RegistryError, match="cannot download") as raised:
        registry.download_artifacts(f"models:/{PROJECT.registered_model}/999", tmp_path)

    # then it is "not there", not "server unreachable"
    assert not isinstance(raised.value, registry.RegistryUnavailableError), (
        f"missing, not down: {raised.value!r}"
    )
