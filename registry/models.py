"""Model versions, aliases and `flywheel.*` tags in the MLflow model registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException

from registry.errors import AliasNotFoundError

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIASES = ("champion", "challenger", "previous")
TAG_PREFIX = "flywheel."


@dataclass(frozen=True)
class ModelVersionInfo:
    """The parts of an MLflow model version that Flywheel reads."""

    name: str
    version: str
    source: str
    run_id: str | None
    aliases: tuple[str, ...]
    tags: Mapping[str, str]


def _client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def _info(mv: object) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,  # type: ignore[attr-defined]  # mlflow entities are untyped
        version=str(mv.version),  # type: ignore[attr-defined]
        source=mv.source,  # type: ignore[attr-defined]
        run_id=mv.run_id,  # type: ignore[attr-defined]
        aliases=tuple(mv.aliases or ()),  # type: ignore[attr-defined]
        tags=dict(mv.tags or {}),  # type: ignore[attr-defined]
    )


def _prefixed(tags: Mapping[str, str]) -> dict[str, str]:
    return {(k if k.startswith(TAG_PREFIX) else TAG_PREFIX + k): str(v) for k, v in tags.items()}


def register_model_version(
    name: str,
    source: str,
    *,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> ModelVersionInfo:
    """Register `source` (e.g. `runs:/<id>/adapter`) as a new version of `name`.

    The registered model is created on first use; `tags` are stored with the
    `flywheel.` prefix.
    """
    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Flywheel application model")
    mv = client.create_model_version(
        name, source, run_id=run_id, tags=_prefixed(tags or {}), description=description
    )
    return _info(client.get_model_version(name, mv.version))


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` at `version` (an atomic move for readers)."""
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}; Flywheel uses {', '.join(ALIASES)}")
    _client().set_registered_model_alias(name, alias, str(version))


def get_version_by_alias(name: str, alias: str) -> ModelVersionInfo:
    """The version under `alias`, or `AliasNotFoundError`."""
    try:
        return _info(_client().get_model_version_by_alias(name, alias))
    except MlflowException as error:
        raise AliasNotFoundError(f"model {name!r} has no version with alias {alias!r}") from error


def get_model_version(name: str, version: str) -> ModelVersionInfo:
    """One version of `name`, or `AliasNotFoundError` (the version is not registered)."""
    try:
        return _info(_client().get_model_version(name, str(version)))
    except MlflowException as error:
        raise AliasNotFoundError(f"model {name!r} has no version {version!r}") from error


def set_version_tags(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set `flywheel.`-prefixed tags on a model version."""
    client = _client()
    for key, value in _prefixed(tags).items():
        client.set_model_version_tag(name, str(version), key, value)
