"""Lineage facts a run records: the code's git sha and the md5 of the data it read."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path


def git_sha(repo: Path | None = None) -> str:
    """The commit the code runs from (with `+dirty` for uncommitted changes), or "unknown"."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes: what DVC records for a file output."""
    digest = hashlib.md5()  # noqa: S324  # a content id as DVC uses, not security
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_hashes(paths: Iterable[Path], root: Path) -> dict[str, str]:
    """`relative path -> md5` of each file, paths relative to `root` (the data dir's parent)."""
    hashes = {}
    for path in paths:
        try:
            name = str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            name = str(path)
        hashes[name] = file_md5(path)
    return hashes
