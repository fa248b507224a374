"""Shared test setup: offline, no telemetry, and the rule for machine services."""

from __future__ import annotations

import os

import pytest

from flywheel.settings import apply_offline_environ


def pytest_configure(config: pytest.Config) -> None:
    """Every test process runs offline with telemetry off, as the product does."""
    apply_offline_environ()


def services_required() -> bool:
    """In CI (FLYWHEEL_REQUIRE_SERVICES=1) a missing PostgreSQL/Redis fails instead of skipping."""
    return os.environ.get("FLYWHEEL_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with a clear reason on a laptop; fail in CI where the service must exist."""
    if services_required():
        pytest.fail(f"{reason} (FLYWHEEL_REQUIRE_SERVICES=1, so this is a failure)")
    pytest.skip(reason)
