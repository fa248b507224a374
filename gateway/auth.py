"""API keys: who may call the gateway, and the name under which a caller is logged and limited.

Keys come from the environment (`FLYWHEEL_GATEWAY_KEYS_FILE`, one `name:key` or bare
`key` per line; `FLYWHEEL_GATEWAY_API_KEYS`, comma-separated). With no keys configured
auth is off, and `create_app` says so loudly. Only SHA-256 digests are kept in memory;
a key is never logged: callers are known by the key's name, or `key-<8 hex of its digest>`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flywheel.settings import Environment
from gateway.errors import ApiError

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


class AuthConfigError(ValueError):
    """The configured keys cannot be used (missing file, no keys in it, duplicate names)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_label(key: str) -> str:
    """A loggable stand-in for a key that has no name: 8 hex characters of its SHA-256."""
    return f"key-{_digest(key).hex()[:8]}"


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys (as digests) and their names; empty means auth is disabled."""

    entries: tuple[tuple[bytes, str], ...] = ()

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured."""
        return bool(self.entries)

    @property
    def names(self) -> tuple[str, ...]:
        """The key names (safe to log)."""
        return tuple(name for _, name in self.entries)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str | None, str]]) -> ApiKeys:
        """Keys from (name or None, key) pairs."""
        entries: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        for name, key in pairs:
            key = key.strip()
            if not key:
                continue
            digest = _digest(key)
            if digest in seen:
                continue
            seen.add(digest)
            entries.append((digest, (name or "").strip() or key_label(key)))
        return cls(tuple(entries))

    @classmethod
    def from_environment(cls, env: Environment) -> ApiKeys:
        """Keys from `FLYWHEEL_GATEWAY_KEYS_FILE` and `FLYWHEEL_GATEWAY_API_KEYS` together."""
        pairs: list[tuple[str | None, str]] = []
        if env.gateway_keys_file is not None:
            from_file = parse_keys_file(env.gateway_keys_file)
            if not from_file:
                # A keys file that is there but empty must not silently switch auth off.
                raise AuthConfigError(f"FLYWHEEL_GATEWAY_KEYS_FILE={env.gateway_keys_file} holds no keys")
            pairs.extend(from_file)
        if env.gateway_api_keys:
            pairs.extend((None, key) for key in env.gateway_api_keys.split(","))
        return cls.from_pairs(pairs)

    def identify(self, authorization: str | None) -> str:
        """The caller's key name for an `Authorization` header; 401 `ApiError` when missing or wrong."""
        if not self.entries:
            return ANONYMOUS
        if not authorization:
            raise ApiError(
                401,
                "missing API key: send it as `Authorization: Bearer <key>`",
                code="missing_api_key",
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "the Authorization header must be `Bearer <key>`", code="invalid_api_key")
        digest = _digest(presented.strip())
        found: str | None = None
        # Compare against every key without stopping early, so timing says nothing about which matched.
        for known, name in self.entries:
            if hmac.compare_digest(known, digest):
                found = name
        if found is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return found


def parse_keys_file(path: Path) -> list[tuple[str | None, str]]:
    """(name, key) pairs from a keys file: `name:key` or `key` per line; blanks and `#` lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise AuthConfigError(f"cannot read FLYWHEEL_GATEWAY_KEYS_FILE={path}: {error.strerror}") from None
    pairs: list[tuple[str | None, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        pairs.append((name, key) if sep else (None, line))
    return pairs


def warn_if_disabled(keys: ApiKeys) -> None:
    """Log, loudly, that the gateway is open when no keys are configured."""
    if keys.enabled:
        logger.info("gateway auth on: %d API key(s): %s", len(keys.entries), ", ".join(keys.names))
        return
    logger.warning(
        "GATEWAY AUTH IS DISABLED: no API keys configured (set FLYWHEEL_GATEWAY_KEYS_FILE or "
        "FLYWHEEL_GATEWAY_API_KEYS). Anyone who can reach this port can call the models."
    )
