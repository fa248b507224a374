"""What the gateway routes by: the model and prompt versions under `champion` and `challenger`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.errors import RegistryUnavailableError
from registry.models import ModelVersionInfo, _info
from registry.prompts import PromptVersionInfo
from registry.tracking import ping

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

CANARY_WEIGHT_TAG = "flywheel.canary_weight"  # on the challenger version: a fraction in [0, 1]
_MAX_REREADS = 3  # a registry still changing after this many reads is read as it was last seen


@dataclass(frozen=True)
class RoutingSnapshot:
    """The registry's routing state at one moment; None where an alias is not set."""

    champion: ModelVersionInfo | None = None
    challenger: ModelVersionInfo | None = None
    champion_prompt: PromptVersionInfo | None = None
    challenger_prompt: PromptVersionInfo | None = None

    @property
    def canary_weight_tag(self) -> str | None:
        """The raw `flywheel.canary_weight` tag: the challenger model's, else the challenger prompt's."""
        for holder in (self.challenger, self.challenger_prompt):
            if holder is not None and CANARY_WEIGHT_TAG in holder.tags:
                return holder.tags[CANARY_WEIGHT_TAG]
        return None


def _is_missing(error: MlflowException) -> bool:
    """True when MLflow says the model, prompt or alias does not exist (rather than failing)."""
    if error.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(error.message)


def _model_version(client: MlflowClient, name: str, alias: str) -> ModelVersionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        return _info(client.get_model_version_by_alias(name, alias))
    except MlflowException as error:
        if _is_missing(error):
            return None
        raise RegistryUnavailableError(f"cannot read model {name!r}@{alias}: {error.message}") from error


def _prompt_version(client: MlflowClient, name: str, alias: str) -> PromptVersionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        # The client call, not mlflow.genai.load_prompt: that caches alias lookups for
        # 60 s, which would delay a prompt promotion by up to a minute.
        pv = client.get_prompt_version_by_alias(name, alias)
    except MlflowException as error:
        if _is_missing(error):
            return None
        raise RegistryUnavailableError(f"cannot read prompt {name!r}@{alias}: {error.message}") from error
    return PromptVersionInfo(name=pv.name, version=str(pv.version), template=pv.template, tags=dict(pv.tags))


def read_routing(model_name: str, prompt_name: str, *, tracking_uri: str | None = None) -> RoutingSnapshot:
    """Read `champion`/`challenger` of the model and the prompt (default: this process's MLflow).

    Raises `RegistryUnavailableError` when MLflow cannot be reached, so a caller
    can tell "nothing registered" (a snapshot of Nones) from "don't know".
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow.get_registry_uri()
    # A quick health check first: the MLflow client retries a dead server for minutes.
    ping(uri, timeout_s=3.0)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def read() -> RoutingSnapshot:
        return RoutingSnapshot(
            champion=_model_version(client, model_name, "champion"),
            challenger=_model_version(client, model_name, "challenger"),
            champion_prompt=_prompt_version(client, prompt_name, "champion"),
            challenger_prompt=_prompt_version(client, prompt_name, "challenger"),
        )

    # The aliases are read in separate calls, so a read can straddle a promotion: `champion`
    # still the old version, `challenger` already gone, and the old champion served again
    # for a poll. Two reads in a row that agree are a state the registry really was in.
    snapshot = read()
    for _ in range(_MAX_REREADS):
        again = read()
        if again == snapshot:
            break
        snapshot = again
    return snapshot
