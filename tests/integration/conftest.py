"""The embedded stack on free loopback ports, in a temporary FLYWHEEL_HOME, for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flywheel.settings import Environment
from flywheel.stack import launcher
from flywheel.stack.ports import free_port
from flywheel.stack.services import embedded_services


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """Variables of a private stack: its own home, data dir and ports (never the user's)."""
    root = tmp_path_factory.mktemp("stack")
    variables = {
        "FLYWHEEL_HOME": str(root / "home"),
        "FLYWHEEL_DATA_DIR": str(root / "data"),
        "FLYWHEEL_PREFECT_PORT": str(free_port()),
        "FLYWHEEL_MLFLOW_PORT": str(free_port()),
        "FLYWHEEL_RUNNER_PORT": str(free_port()),
        "FLYWHEEL_GATEWAY_PORT": str(free_port()),
    }
    saved = {key: os.environ.get(key) for key in [*variables, "PREFECT_API_URL", "MLFLOW_TRACKING_URI"]}
    os.environ.update(variables)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    try:
        yield Environment()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def stack(stack_env: Environment) -> Iterator[Environment]:
    """Prefect, MLflow, the runner and the gateway (real SmolLM2), really running; stopped by pid after."""
    specs = embedded_services(stack_env)
    launcher.up(stack_env, specs)
    states = [launcher.read_state(stack_env, spec.name) for spec in specs]
    try:
        yield stack_env
    finally:
        launcher.down(stack_env, specs)
        leftovers = [s.name for s in states if s is not None and launcher.pid_alive(s.pid)]
        assert not leftovers, f"flywheel down left processes behind: {leftovers}"


@pytest.fixture(scope="session")
def mlflow_uri(stack: Environment) -> Iterator[str]:
    """This process's MLflow client pointed at the stack's tracking server."""
    from registry import configure_tracking

    configure_tracking(stack.tracking_uri, experiment="flywheel-tests")
    yield stack.tracking_uri


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    """The instant OpenAI-compatible stub, as its own process on loopback."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[2] / "bench" / "stub_openai.py"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def own_mlflow() -> Iterator[None]:
    """For a module that starts its own MLflow: drop the tracking URI an earlier module left behind.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which `Environment()` and
    every child process (the gateway) would otherwise take for their own.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield
