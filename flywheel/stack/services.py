"""The services of the embedded stack: how each is started and how its health is checked."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.settings import PROJECT_ROOT, Environment, offline_environ


@dataclass(frozen=True)
class ServiceSpec:
    """One long-running process of the stack."""

    name: str
    argv: tuple[str, ...]
    port: int
    port_env_var: str  # the variable that moves this service to another port
    url: str  # what a person opens (UI or API root)
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0
    depends_on: tuple[str, ...] = ()
    cwd: Path | None = None


def _venv_script(name: str) -> str:
    """The console script installed next to this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def mlflow_backend_uri(env: Environment) -> str:
    """SQLite under FLYWHEEL_HOME, unless FLYWHEEL_MLFLOW_BACKEND_URI points elsewhere (Postgres)."""
    return os.environ.get("FLYWHEEL_MLFLOW_BACKEND_URI") or f"sqlite:///{env.home / 'mlflow' / 'mlflow.db'}"


def prefect_database_url(env: Environment) -> str:
    """SQLite under FLYWHEEL_HOME, unless FLYWHEEL_PREFECT_DATABASE_URL points elsewhere."""
    return os.environ.get("FLYWHEEL_PREFECT_DATABASE_URL") or (
        f"sqlite+aiosqlite:///{env.home / 'prefect' / 'prefect.db'}"
    )


def embedded_services(env: Environment, *, gateway: bool = True) -> list[ServiceSpec]:
    """Prefect server, MLflow server, the deployment runner and the gateway, in start order."""
    host = env.host
    prefect_url = f"http://{host}:{env.prefect_port}"
    mlflow_url = f"http://{host}:{env.mlflow_port}"
    common = {
        **offline_environ(),
        "FLYWHEEL_HOME": str(env.home),
        "FLYWHEEL_DATA_DIR": str(env.data_dir),
        "FLYWHEEL_PARAMS": str(env.params_path),
        "PYTHONUNBUFFERED": "1",
    }
    prefect = ServiceSpec(
        name="prefect",
        argv=(_venv_script("prefect"), "server", "start", "--host", host, "--port", str(env.prefect_port)),
        port=env.prefect_port,
        port_env_var="FLYWHEEL_PREFECT_PORT",
        url=prefect_url,
        health_url=f"{prefect_url}/api/health",
        env={
            **common,
            "PREFECT_HOME": str(env.home / "prefect"),
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database_url(env),
            "PREFECT_UI_API_URL": f"{prefect_url}/api",
        },
    )
    mlflow = ServiceSpec(
        name="mlflow",
        argv=(
            _venv_script("mlflow"),
            "server",
            "--backend-store-uri",
            mlflow_backend_uri(env),
            "--artifacts-destination",
            str(env.home / "mlflow" / "artifacts"),
            "--host",
            host,
            "--port",
            str(env.mlflow_port),
            "--workers",
            "1",
        ),
        port=env.mlflow_port,
        port_env_var="FLYWHEEL_MLFLOW_PORT",
        url=mlflow_url,
        health_url=f"{mlflow_url}/health",
        env=common,
    )
    runner_url = f"http://{host}:{env.runner_port}"
    runner = ServiceSpec(
        name="runner",
        argv=(sys.executable, "-m", "flows.deployments"),
        port=env.runner_port,
        port_env_var="FLYWHEEL_RUNNER_PORT",
        url=f"{prefect_url}/deployments",
        health_url=f"{runner_url}/health",
        env={
            **common,
            "PREFECT_HOME": str(env.home / "prefect"),
            "PREFECT_API_URL": f"{prefect_url}/api",
            "MLFLOW_TRACKING_URI": mlflow_url,
            # The runner's own web server answers /health (503 once it stops polling).
            "PREFECT_RUNNER_SERVER_ENABLE": "true",
            "PREFECT_RUNNER_SERVER_HOST": host,
            "PREFECT_RUNNER_SERVER_PORT": str(env.runner_port),
            "PYTHONPATH": str(PROJECT_ROOT),
        },
        depends_on=("prefect", "mlflow"),
        cwd=PROJECT_ROOT,  # flow entrypoints are paths relative to the project
    )
    gateway_url = f"http://{host}:{env.gateway_port}"
    gateway_spec = ServiceSpec(
        name="gateway",
        argv=(sys.executable, "-m", "gateway", "--host", host, "--port", str(env.gateway_port)),
        port=env.gateway_port,
        port_env_var="FLYWHEEL_GATEWAY_PORT",
        url=f"{gateway_url}/v1",
        health_url=f"{gateway_url}/healthz",
        env={
            **common,
            "MLFLOW_TRACKING_URI": mlflow_url,
            "PYTHONPATH": str(PROJECT_ROOT),
        },
        # healthy once the champion's model is loaded and warm (about 25 s on 2 cores)
        start_timeout_s=300.0,
        depends_on=("mlflow",),
        cwd=PROJECT_ROOT,
    )
    services = [prefect, mlflow, runner]
    return [*services, gateway_spec] if gateway else services
