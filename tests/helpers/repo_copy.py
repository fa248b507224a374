"""A copy of this repo (tracked and new files, no data) in a fresh git repo with a private DVC remote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command in the copy; the caller checks the return code."""
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def copy_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The copy at `tmp_path/repo` and an environment whose home, data dir and params are the copy's."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    repo = tmp_path / "repo"
    for rel in filter(None, listed):
        source = ROOT / rel
        if rel.startswith("data/") or not source.is_file():
            continue
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, repo / rel)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "FLYWHEEL_DATA_DIR": str(repo / "data"),
        "FLYWHEEL_PARAMS": str(repo / "params.yaml"),
    }
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"],
        [str(BIN / "dvc"), "remote", "add", "-f", "-d", "local", str(tmp_path / "remote")],
    ):
        result = run(command, repo, env)
        if result.returncode != 0:
            raise RuntimeError(f"{command} failed: {result.stderr}")
    return repo, env
