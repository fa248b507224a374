"""API keys from the environment: files, lists, names, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.settings import Environment
from gateway.auth import ANONYMOUS, ApiKeys, AuthConfigError, key_label
from gateway.errors import ApiError


def test_keys_from_file_and_list(tmp_path: Path) -> None:
    # given a keys file with names, a bare key and comments, and a comma-separated list
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nalice:sk-alice\n\nsk-bare\n", encoding="utf-8")
    env = Environment(FLYWHEEL_GATEWAY_KEYS_FILE=keys_file, FLYWHEEL_GATEWAY_API_KEYS="sk-one, sk-two")
    # when the keys are loaded
    keys = ApiKeys.from_environment(env)
    # then each key is known under its name, or a label that does not reveal it
    assert keys.identify("Bearer sk-alice") == "alice", "named key"
    assert keys.identify("Bearer sk-bare") == key_label("sk-bare"), "bare key gets a label"
    assert keys.identify("bearer sk-two") == key_label("sk-two"), "list keys, scheme case-insensitive"
    assert "sk-bare" not in key_label("sk-bare"), "the label does not contain the key"
    assert len(keys.entries) == 4, keys.names


def test_no_keys_means_anonymous() -> None:
    # given no keys configured
    keys = ApiKeys.from_environment(
        Environment(FLYWHEEL_GATEWAY_KEYS_FILE=None, FLYWHEEL_GATEWAY_API_KEYS=None)
    )
    # when anyone calls
    # then they pass as anonymous
    assert not keys.enabled and keys.identify(None) == ANONYMOUS, "auth is off"


@pytest.mark.parametrize("content", ["", "# only a comment\n\n"], ids=["empty", "comments-only"])
def test_a_keys_file_without_keys_is_refused(tmp_path: Path, content: str) -> None:
    # given a configured keys file with no keys in it
    keys_file = tmp_path / "keys"
    keys_file.write_text(content, encoding="utf-8")
    # when keys are loaded
    # then it fails instead of silently switching auth off
    with pytest.raises(AuthConfigError, match="holds no keys"):
        ApiKeys.from_environment(Environment(FLYWHEEL_GATEWAY_KEYS_FILE=keys_file))


def test_a_missing_keys_file_is_refused(tmp_path: Path) -> None:
    # when the keys file does not exist
    # then loading names it
    with pytest.raises(AuthConfigError, match="cannot read"):
        ApiKeys.from_environment(Environment(FLYWHEEL_GATEWAY_KEYS_FILE=tmp_path / "nope"))


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Token sk-alice", "Bearer sk-alicex"], ids=repr
)
def test_bad_headers_are_401(header: str | None) -> None:
    # given one key
    keys = ApiKeys.from_pairs([("alice", "sk-alice")])
    # when the header is missing, malformed or wrong
    with pytest.raises(ApiError) as refused:
        keys.identify(header)
    # then 401, and the message never echoes the presented key
    assert refused.value.status == 401, refused.value.message
    assert "sk-alice" not in refused.value.message, "no key in the message"
