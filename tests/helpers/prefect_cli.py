"""The `prefect` CLI against a test stack's API, as an engineer would type it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flywheel.settings import Environment

BIN = Path(sys.executable).parent


def prefect(env: Environment, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `prefect <args>` with PREFECT_API_URL at the stack; the caller checks the result."""
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env={**os.environ, "PREFECT_API_URL": env.api_url},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
