"""Artifacts of registered model versions (e.g. a LoRA adapter), downloaded to a local folder."""

from __future__ import annotations

from pathlib import Path

from registry.errors import RegistryError, RegistryUnavailableError


def download_artifacts(uri: str, dst: Path, *, tracking_uri: str | None = None) -> Path:
    """Download the artifacts at `uri` (`models:/name/version`, `runs:/...`) into `dst`; return their path.

    Raises `RegistryUnavailableError` when the server cannot be reached and
    `RegistryError` when the artifact does not exist.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
    except MlflowException as error:
        if error.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            raise RegistryError(f"cannot download {uri}: {error.message}") from error
        raise RegistryUnavailableError(f"cannot download {uri}: {error.message}") from error
    except OSError as error:
        # requests' connection errors are OSErrors; so are full disks, which retrying may also fix.
        raise RegistryUnavailableError(f"cannot download {uri}: {error}") from error
    return Path(local)
