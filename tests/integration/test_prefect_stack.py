"""The embedded stack as a user drives it: deployments listed, a run from the CLI, status, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.deployments import DEPLOYMENTS
from flywheel.settings import Environment, load_params

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _prefect(env: Environment, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env={**os.environ, "PREFECT_API_URL": env.api_url},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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
