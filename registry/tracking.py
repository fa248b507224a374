"""Where MLflow is: configured once by the entry points, never at import time."""

from __future__ import annotations

import urllib.error
import urllib.request

from registry.errors import RegistryUnavailableError


def configure_tracking(tracking_uri: str, experiment: str | None = None) -> None:
    """Point this process's MLflow client at the tracking server (and experiment)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if experiment:
        mlflow.set_experiment(experiment)


def ping(tracking_uri: str, timeout_s: float = 3.0) -> None:
    """Raise `RegistryUnavailableError` unless the server's /health answers 200."""
    if not tracking_uri.startswith(("http://", "https://")):
        return  # a local file/sqlite store has no server to ping
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
            if response.status == 200:
                return
            raise RegistryUnavailableError(f"MLflow at {tracking_uri} answered HTTP {response.status}")
    except (urllib.error.URLError, OSError) as error:
        raise RegistryUnavailableError(
            f"MLflow is not reachable at {tracking_uri} ({error}); start it with `flywheel up` "
            "or set MLFLOW_TRACKING_URI"
        ) from error
