"""Promotion moves: the only code that moves `champion`/`challenger`/`previous` and sets the canary weight.

Every move is ordered so the gateway, which polls `champion`, `challenger` and
the challenger's `flywheel.canary_weight`, never sees zero or two champions and
never routes to a version that is neither champion nor challenger:

* abort: weight 0 first, then the `rolled_back` tags, then the `challenger` alias goes;
* promote: `previous` <- old champion, then `champion` <- the new version (one alias
  set, atomic for readers), then the `challenger` alias and the canary tags go;
* rollback: `champion` <- `previous` (one alias set), then `previous` <- the demoted one.

Models and prompts take the same path: a `Subject` names which registry.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from registry.errors import RegistryError
from registry.models import ALIASES, TAG_PREFIX
from registry.routing import CANARY_WEIGHT_TAG, _is_missing

if TYPE_CHECKING:
    from mlflow import MlflowClient

Kind = Literal["model", "prompt"]

APPROVED_BY_TAG = "flywheel.approved_by"
PRODUCED_BY_TAG = "flywheel.produced_by"  # set by register_candidate: who (which identity) produced it
CANARY_STATE_TAG = "flywheel.canary_state"  # running | rolled_back | promoted | demoted
CANARY_REASON_TAG = "flywheel.canary_reason"
CANARY_HEARTBEAT_TAG = "flywheel.canary_heartbeat"  # ISO time of the running canary's last step
APPROVAL_NOTIFIED_TAG = "flywheel.approval_notified"  # "approval needed" was sent once for this version
AUDIT_LAST_TAG = "flywheel.audit.last"
AUDIT_ARTIFACT = "promotion/audit.jsonl"
MODEL_CARD_ARTIFACT = "evaluation/model_card.md"  # written by the evaluate flow
HISTORY_HEADING = "## Promotion history"
HISTORY_ARTIFACT = "promotion/history.md"
# MLflow rejects tag values above 5,000 characters; a reason or audit entry is cut, never refused.
_MAX_TAG = 5000


class NothingToRollBackError(RegistryError):
    """There is no `previous` version to restore."""


@dataclass(frozen=True)
class Subject:
    """What is promoted: a registered model or a prompt, by name."""

    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class VersionRef:
    """One version of a model or prompt, with its tags (the reviewer's interface)."""

    subject: Subject
    version: str
    tags: Mapping[str, str]
    run_id: str | None = None


@dataclass(frozen=True)
class AliasState:
    """The versions under `champion`, `challenger` and `previous`; None where an alias is unset."""

    champion: VersionRef | None
    challenger: VersionRef | None
    previous: VersionRef | None


def current_identity() -> str:
    """Who this process acts as: `$FLYWHEEL_IDENTITY`, else the OS user (for producer and audit tags)."""
    return os.environ.get("FLYWHEEL_IDENTITY") or getpass.getuser()


def _client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def _ref(subject: Subject, entity: object) -> VersionRef:
    return VersionRef(
        subject=subject,
        version=str(entity.version),  # type: ignore[attr-defined]  # mlflow entities are untyped
        tags=dict(entity.tags or {}),  # type: ignore[attr-defined]
        run_id=getattr(entity, "run_id", None),
    )


def _by_alias(client: MlflowClient, subject: Subject, alias: str) -> VersionRef | None:
    from mlflow.exceptions import MlflowException

    try:
        if subject.kind == "model":
            entity = client.get_model_version_by_alias(subject.name, alias)
        else:
            entity = client.get_prompt_version_by_alias(subject.name, alias)
    except MlflowException as error:
        if _is_missing(error):
            return None
        raise
    return None if entity is None else _ref(subject, entity)


def read_aliases(subject: Subject) -> AliasState:
    """The current champion, challenger and previous versions."""
    client = _client()
    return AliasState(*(_by_alias(client, subject, alias) for alias in ALIASES))


def get_version(subject: Subject, version: str) -> VersionRef:
    """One version with its current tags."""
    client = _client()
    if subject.kind == "model":
        return _ref(subject, client.get_model_version(subject.name, str(version)))
    entity = client.get_prompt_version(subject.name, str(version))
    if entity is None:
        raise RegistryError(f"{subject} has no version {version}")
    return _ref(subject, entity)


def _set_alias(client: MlflowClient, subject: Subject, alias: str, version: str) -> None:
    if subject.kind == "model":
        client.set_registered_model_alias(subject.name, alias, str(version))
    else:
        client.set_prompt_alias(subject.name, alias, int(version))


def _delete_alias(client: MlflowClient, subject: Subject, alias: str) -> None:
    if subject.kind == "model":
        client.delete_registered_model_alias(subject.name, alias)
    else:
        client.delete_prompt_alias(subject.name, alias)


def set_tags(subject: Subject, version: str, tags: Mapping[str, str]) -> None:
    """Set `flywheel.`-prefixed tags on a model or prompt version (values cut to MLflow's limit)."""
    client = _client()
    for key, value in tags.items():
        full = key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key
        if subject.kind == "model":
            client.set_model_version_tag(subject.name, str(version), full, str(value)[:_MAX_TAG])
        else:
            client.set_prompt_version_tag(subject.name, str(version), full, str(value)[:_MAX_TAG])


def _delete_tags(client: MlflowClient, subject: Subject, version: str, keys: tuple[str, ...]) -> None:
    present = get_version(subject, version).tags
    for key in keys:
        if key not in present:
            continue  # deleting a missing tag is an error in MLflow, and there is nothing to clear
        if subject.kind == "model":
            client.delete_model_version_tag(subject.name, str(version), key)
        else:
            client.delete_prompt_version_tag(subject.name, str(version), key)


def set_canary_weight(subject: Subject, version: str, weight: float) -> None:
    """Send `weight` (a fraction in [0, 1]) of users to the challenger `version`."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"canary weight must be a fraction in [0, 1], not {weight!r}")
    set_tags(subject, version, {CANARY_WEIGHT_TAG: f"{weight:g}"})


def mark_canary_running(subject: Subject, version: str, at: str) -> None:
    """Tag `canary_state=running` with a heartbeat time, so a second flow run knows one is in progress."""
    set_tags(subject, version, {CANARY_STATE_TAG: "running", CANARY_HEARTBEAT_TAG: at})


def mark_approval_notified(subject: Subject, version: str, at: str) -> None:
    """Remember that "approval needed" was sent for this version (once, not every scheduled run)."""
    set_tags(subject, version, {APPROVAL_NOTIFIED_TAG: at})


def abort_canary(subject: Subject, version: str, reason: str) -> None:
    """Weight 0, tag `canary_state=rolled_back` with the reason, then remove the `challenger` alias."""
    client = _client()
    # Weight first: from the next poll every user is on the champion, before anything else changes.
    set_canary_weight(subject, version, 0.0)
    set_tags(subject, version, {CANARY_STATE_TAG: "rolled_back", CANARY_REASON_TAG: reason})
    challenger = _by_alias(client, subject, "challenger")
    if challenger is not None and challenger.version == str(version):
        _delete_alias(client, subject, "challenger")


def promote_challenger(subject: Subject, version: str) -> str | None:
    """Make `version` the champion and the old champion `previous`; returns the old champion's version."""
    client = _client()
    old = _by_alias(client, subject, "champion")
    if old is not None and old.version == str(version):
        return None  # already champion: promoting twice must not make it its own `previous`
    if old is not None:
        _set_alias(client, subject, "previous", old.version)
    # The one move the gateway sees: champion switches from old to new in a single alias set.
    _set_alias(client, subject, "champion", str(version))
    challenger = _by_alias(client, subject, "challenger")
    if challenger is not None and challenger.version == str(version):
        _delete_alias(client, subject, "challenger")
    _delete_tags(client, subject, str(version), (CANARY_WEIGHT_TAG, CANARY_HEARTBEAT_TAG, CANARY_REASON_TAG))
    set_tags(subject, str(version), {CANARY_STATE_TAG: "promoted"})
    return old.version if old is not None else None


def rollback_champion(subject: Subject, reason: str) -> tuple[str, str | None]:
    """Put `previous` back as champion at once; the demoted one becomes `previous`.

    Returns (restored version, demoted version). Raises `NothingToRollBackError`
    when no `previous` is set.
    """
    client = _client()
    state = AliasState(*(_by_alias(client, subject, alias) for alias in ALIASES))
    if state.previous is None:
        raise NothingToRollBackError(f"{subject} has no `previous` version to roll back to")
    restored = state.previous.version
    demoted = state.champion.version if state.champion is not None else None
    if demoted == restored:
        return restored, None
    _set_alias(client, subject, "champion", restored)
    if demoted is not None:
        _set_alias(client, subject, "previous", demoted)
        set_tags(subject, demoted, {CANARY_STATE_TAG: "demoted", CANARY_REASON_TAG: reason})
    return restored, demoted


def mirror_audit(
    subject: Subject, version: str, entry_json: str, trail_jsonl: str, history_md: str | None = None
) -> None:
    """Mirror an audit entry on the version: the latest entry as a tag; the trail as run artifacts.

    The run (the one the model card lives in) gets the trail as JSONL and, if
    given, a markdown promotion history. Prompt versions have no run: tag only.
    """
    set_tags(subject, version, {AUDIT_LAST_TAG: entry_json})
    if subject.kind != "model":
        return
    run_id = get_version(subject, version).run_id
    if run_id:
        client = _client()
        client.log_text(run_id, trail_jsonl, AUDIT_ARTIFACT)
        if history_md is not None:
            client.log_text(run_id, history_md, HISTORY_ARTIFACT)
            _update_model_card(client, run_id, history_md)


def _update_model_card(client: MlflowClient, run_id: str, history_md: str) -> None:
    """Replace the model card's promotion history section with `history_md` (the card is the gate's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        card = mlflow.artifacts.load_text(f"runs:/{run_id}/{MODEL_CARD_ARTIFACT}")
    except (MlflowException, OSError):
        return  # a version registered without the gate has no card to extend
    head = card.split(HISTORY_HEADING, 1)[0].rstrip()
    history = history_md[history_md.index(HISTORY_HEADING) :] if HISTORY_HEADING in history_md else history_md
    client.log_text(run_id, f"{head}\n\n{history.strip()}\n", MODEL_CARD_ARTIFACT)
