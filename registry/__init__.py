"""The only code that talks to the MLflow registries (models and prompts).

Aliases, never stages: `champion`, `challenger`, `previous`. Tags prefixed
`flywheel.` are the reviewer's interface in the MLflow UI.
"""

from registry.artifacts import download_artifacts
from registry.candidates import APPROVAL_TAG, GATE_TAG, register_candidate
from registry.errors import AliasNotFoundError, RegistryError, RegistryUnavailableError
from registry.models import (
    ALIASES,
    TAG_PREFIX,
    ModelVersionInfo,
    get_version_by_alias,
    register_model_version,
    set_alias,
    set_version_tags,
)
from registry.prompts import PromptVersionInfo, load_prompt, register_prompt, set_prompt_alias
from registry.routing import CANARY_WEIGHT_TAG, RoutingSnapshot, read_routing
from registry.tracking import configure_tracking, ping

__all__ = [
    "ALIASES",
    "APPROVAL_TAG",
    "CANARY_WEIGHT_TAG",
    "GATE_TAG",
    "TAG_PREFIX",
    "AliasNotFoundError",
    "ModelVersionInfo",
    "PromptVersionInfo",
    "RegistryError",
    "RegistryUnavailableError",
    "RoutingSnapshot",
    "configure_tracking",
    "download_artifacts",
    "get_version_by_alias",
    "load_prompt",
    "ping",
    "read_routing",
    "register_candidate",
    "register_model_version",
    "register_prompt",
    "set_alias",
    "set_prompt_alias",
    "set_version_tags",
]
