"""Prompts as versioned data in the MLflow prompt registry, with the same aliases as models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from registry.errors import AliasNotFoundError
from registry.models import ALIASES

ChatTemplate = list[dict[str, str]]


@dataclass(frozen=True)
class PromptVersionInfo:
    """The parts of an MLflow prompt version that Flywheel reads."""

    name: str
    version: str
    template: str | ChatTemplate
    tags: Mapping[str, str]


def register_prompt(
    name: str,
    template: str | ChatTemplate,
    *,
    commit_message: str,
    tags: Mapping[str, str] | None = None,
) -> PromptVersionInfo:
    """Register a new version of a text or chat prompt (`{{variable}}` placeholders)."""
    import mlflow

    pv = mlflow.genai.register_prompt(
        name=name, template=template, commit_message=commit_message, tags=dict(tags or {})
    )
    return PromptVersionInfo(name=pv.name, version=str(pv.version), template=pv.template, tags=dict(pv.tags))


def set_prompt_alias(name: str, alias: str, version: str) -> None:
    """Point a prompt alias at a version."""
    import mlflow

    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}; Flywheel uses {', '.join(ALIASES)}")
    mlflow.genai.set_prompt_alias(name, alias=alias, version=int(version))


def load_prompt(name: str, alias: str) -> PromptVersionInfo:
    """The prompt version under `alias`, or `AliasNotFoundError`."""
    import mlflow

    try:
        pv = mlflow.genai.load_prompt(f"prompts:/{name}@{alias}")
    except MlflowException as error:
        raise AliasNotFoundError(f"prompt {name!r} has no version with alias {alias!r}") from error
    return PromptVersionInfo(name=pv.name, version=str(pv.version), template=pv.template, tags=dict(pv.tags))
