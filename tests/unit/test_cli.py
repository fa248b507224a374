"""The CLI as a user meets it: help everywhere, clear errors for bad params and busy ports."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.stack.ports import free_port

runner = CliRunner()


@pytest.fixture
def private_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(tmp_path / "data"))
    for var in ("FLYWHEEL_PREFECT_PORT", "FLYWHEEL_MLFLOW_PORT", "FLYWHEEL_RUNNER_PORT"):
        monkeypatch.setenv(var, str(free_port()))
    return tmp_path


@pytest.mark.parametrize(
    "command", [[], ["up"], ["down"], ["status"], ["run"], ["demo"], ["demo", "seed"], ["config"]]
)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, f"{command} --help failed: {result.output}"
    assert "Usage" in result.output, f"{command} --help should print usage: {result.output}"


def test_config_schema_is_json_schema() -> None:
    result = runner.invoke(app, ["config", "--schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert "demo" in schema["properties"], "schema should describe the demo section"


def test_invalid_params_fail_naming_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("demo:\n  n_records: lots\n  colour: blue\n")
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(bad))
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2, f"bad params should exit 2: {result.output}"
    assert "demo.n_records" in result.output and "demo.colour" in result.output, result.output


def test_up_on_a_busy_port_names_the_port(private_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        monkeypatch.setenv("FLYWHEEL_PREFECT_PORT", str(busy))
        result = runner.invoke(app, ["up", "--timeout", "30"])
    assert result.exit_code == 1, f"up on a busy port should fail: {result.output}"
    assert f"port {busy}" in result.output and "FLYWHEEL_PREFECT_PORT" in result.output, result.output
    assert not list((private_env / "home" / "run").glob("*.json")), (
        "nothing should be left recorded as running"
    )


def test_status_of_a_stopped_stack_is_unhealthy(private_env: Path) -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 1, "status should exit 1 when services are down"
    payload = json.loads(result.output)
    assert payload["healthy"] is False and {s["state"] for s in payload["services"]} == {"stopped"}, payload


def test_run_lists_deployments_and_rejects_unknown_flows() -> None:
    listed = runner.invoke(app, ["run", "--list"])
    assert listed.exit_code == 0 and "seed-demo/on-demand" in listed.output, listed.output
    unknown = runner.invoke(app, ["run", "nope"])
    assert unknown.exit_code == 2 and "known flows" in unknown.output, unknown.output


def test_bad_parameter_syntax_is_rejected() -> None:
    result = runner.invoke(app, ["run", "seed-demo", "-p", "n_records"])
    assert result.exit_code == 2 and "key=value" in result.output, result.output
