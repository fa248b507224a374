"""Durable file writes: temp file, fsync, atomic rename; deterministic partition names."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

CRASH_ENV = "FLYWHEEL_TEST_CRASH_AT"
_LINES_PER_WRITE = 8192


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process here when `FLYWHEEL_TEST_CRASH_AT` names this point.

    A no-op otherwise. tests/integration/test_harvest_crash.py kills a harvest at each
    point in turn and checks that a re-run harvests every record exactly once.
    """
    if name and os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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


def write_atomic(path: Path, lines: Iterable[bytes], tmp_written: str = "") -> str:
    """Write newline-terminated `lines` to `path` atomically and durably; return the md5.

    `tmp_written` names the `crash_point` between the fsynced temp file and its rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    digest = hashlib.md5()  # noqa: S324  # a content digest as DVC uses, not security
    with tmp.open("wb") as out:
        # in blocks of lines: a write and a digest update per line cost more than the bytes
        pending = iter(lines)
        while block := list(islice(pending, _LINES_PER_WRITE)):
            data = b"\n".join(block) + b"\n"
            digest.update(data)
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
    crash_point(tmp_written)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return digest.hexdigest()


def write_or_remove(path: Path, lines: list[bytes], tmp_written: str = "") -> str | None:
    """Write `lines` atomically, or remove a stale file of that name when there are none."""
    if lines:
        return write_atomic(path, lines, tmp_written)
    path.unlink(missing_ok=True)
    return None
