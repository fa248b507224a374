"""Durable file writes: temp file, fsync, atomic rename; deterministic partition names."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson


def run_id(source_id: str, start_watermark: dict[str, Any]) -> str:
    """A run id that depends only on where the run starts reading.

    The watermark is committed only after the partition is durable, so a re-run
    after any crash starts from the same watermark, gets the same id and
    overwrites the same partition file instead of adding a duplicate.
    """
    key = orjson.dumps({"source": source_id, "start": start_watermark}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(key).hexdigest()[:16]


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where dirs cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, lines: Iterable[bytes]) -> str:
    """Write newline-terminated `lines` to `path` atomically and durably; return the md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    digest = hashlib.md5()  # noqa: S324  # a content digest as DVC uses, not security
    with tmp.open("wb") as out:
        for line in lines:
            chunk = line + b"\n"
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return digest.hexdigest()


def write_or_remove(path: Path, lines: list[bytes]) -> str | None:
    """Write `lines` atomically, or remove a stale file of that name when there are none."""
    if lines:
        return write_atomic(path, lines)
    path.unlink(missing_ok=True)
    return None
