"""DVC bookkeeping for the data stages: track, commit, push, and read back hashes.

The flows do the work themselves (Prefect tasks, visible in the UI) and then
record it with DVC, so `dvc status` is clean after a run and `dvc repro`
reproduces the same bytes from the same inputs. A data dir outside a DVC repo
(a test's temporary dir, a user who did not `dvc init`) is not an error: the
stage runs and says that nothing was versioned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Versioned:
    """What DVC recorded for a stage's outputs: path (relative to the repo) -> md5."""

    repo: Path | None
    hashes: dict[str, str] = field(default_factory=dict)
    pushed: bool = False
    note: str = ""


def find_repo(path: Path) -> Path | None:
    """The DVC repo root holding `path` (the nearest parent with a `.dvc` folder), if any."""
    path = path.resolve()
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


_CWD_LOCK = threading.Lock()


@contextmanager
def _open(root: Path) -> Iterator[Any]:
    """The DVC repo at `root`, with the process's cwd in it while it is open.

    DVC resolves stage and output paths against the cwd, and a flow run's cwd is wherever
    its runner started (not necessarily this repo): without the chdir, `dvc commit` reads
    the wrong dvc.yaml. The lock keeps two threads from moving the cwd under each other.
    """
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo

    with _CWD_LOCK, contextlib.chdir(root), Repo(str(root)) as repo:
        yield repo


def _relative(root: Path, paths: Sequence[Path]) -> list[str]:
    return [os.path.relpath(p.resolve(), root) for p in paths]


def lock_hashes(root: Path, stage: str) -> dict[str, str]:
    """The md5 of each output of `stage` as dvc.lock records it."""
    path = root / "dvc.lock"
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    outs = (lock or {}).get("stages", {}).get(stage, {}).get("outs", [])
    return {out["path"]: out["md5"] for out in outs}


def dvcfile_hashes(root: Path, tracked: Sequence[str]) -> dict[str, str]:
    """The md5 each `<path>.dvc` file records (for data added with `dvc add`)."""
    hashes: dict[str, str] = {}
    for rel in tracked:
        dvcfile = root / f"{rel}.dvc"
        if dvcfile.exists():
            outs = yaml.safe_load(dvcfile.read_text(encoding="utf-8")).get("outs", [])
            if outs:  # one out per `dvc add` file
                hashes[rel] = outs[0]["md5"]
    return hashes


def _push(repo: Any, targets: list[str]) -> tuple[bool, str]:
    """Push `targets` to the default remote; a missing remote is a note, not a failure."""
    if not repo.config.get("core", {}).get("remote"):
        return False, "no default DVC remote configured: not pushed"
    pushed = repo.push(targets=targets)
    return True, f"pushed {pushed} file(s) to the DVC remote"


def track_data(paths: Sequence[Path], push: bool = True) -> Versioned:
    """`dvc add` data written outside any stage (the raw partitions), then push."""
    root = find_repo(paths[0]) if paths else None
    if root is None:
        return Versioned(None, note="data dir is not inside a DVC repo: not versioned")
    rel = _relative(root, paths)
    with _open(root) as repo:
        repo.add(rel)
        pushed, note = _push(repo, rel) if push else (False, "push skipped")
    return Versioned(root, dvcfile_hashes(root, rel), pushed, note)


def commit_stage(anchor: Path, stage: str, push: bool = True) -> Versioned:
    """Record a stage the flow just ran (`dvc commit <stage>`): dvc.lock gets its hashes.

    `anchor` is any path inside the repo (e.g. the stage's output dir).
    """
    root = find_repo(anchor)
    if root is None or not (root / "dvc.yaml").exists():
        return Versioned(None, note="data dir is not inside a DVC repo with dvc.yaml: not versioned")
    with _open(root) as repo:
        repo.commit(stage, force=True)
        pushed, note = _push(repo, [stage]) if push else (False, "push skipped")
    return Versioned(root, lock_hashes(root, stage), pushed, note)
