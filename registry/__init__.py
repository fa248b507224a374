"""The only code that talks to the MLflow registries (models and prompts).

Aliases, never stages: `champion`, `challenger`, `previous`. Tags prefixed
`flywheel.` are the reviewer's interface in the MLflow UI.
"""

from registry.artifacts import download_artifacts
from registry.candidates import APPROVAL_TAG, GATE_TAG, record_review, register_candidate
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
from registry.promotion import (
    APPROVAL_NOTIFIED_TAG,
    APPROVED_BY_TAG,
    CANARY_HEARTBEAT_TAG,
    CANARY_REASON_TAG,
    CANARY_STATE_TAG,
    PRODUCED_BY_TAG,
    AliasState,
    NothingToRollBackError,
    Subject,
    VersionRef,
    abort_canary,
    current_identity,
    get_version,
    mark_approval_notified,
    mark_canary_running,
    mirror_audit,
    promote_challenger,
    read_aliases,
    rollback_champion,
    set_canary_weight,
)
from registry.prompts import PromptVersionInfo, load_prompt, register_prompt, set_prompt_alias
from registry.routing import CANARY_WEIGHT_TAG, RoutingSnapshot, read_routing
from registry.tracking import configure_tracking, ping

__all__ = [
    "ALIASES",
    "APPROVAL_NOTIFIED_TAG",
    "APPROVAL_TAG",
    "APPROVED_BY_TAG",
    "CANARY_HEARTBEAT_TAG",
    "CANARY_REASON_TAG",
    "CANARY_STATE_TAG",
    "CANARY_WEIGHT_TAG",
    "GATE_TAG",
    "PRODUCED_BY_TAG",
    "TAG_PREFIX",
    "AliasNotFoundError",
    "AliasState",
    "ModelVersionInfo",
    "NothingToRollBackError",
    "PromptVersionInfo",
    "RegistryError",
    "RegistryUnavailableError",
    "RoutingSnapshot",
    "Subject",
    "VersionRef",
    "abort_canary",
    "configure_tracking",
    "current_identity",
    "download_artifacts",
    "get_version",
    "get_version_by_alias",
    "load_prompt",
    "mark_approval_notified",
    "mark_canary_running",
    "mirror_audit",
    "ping",
    "promote_challenger",
    "read_aliases",
    "read_routing",
    "record_review",
    "register_candidate",
    "register_model_version",
    "register_prompt",
    "rollback_champion",
    "set_alias",
    "set_canary_weight",
    "set_prompt_alias",
    "set_version_tags",
]
