"""The persisted watermark of each source: one small JSON file, replaced atomically."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import orjson

from tasks.harvest.partitions import write_atomic


def watermark_path(state_dir: Path, source_id: str) -> Path:
    """The watermark file of a source: a readable prefix plus a hash of the full id."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source_id)[:40].strip("-")
    digest = hashlib.sha256(source_id.encode()).hexdigest()[:12]
    return state_dir / f"watermark-{slug}-{digest}.json"


def load_watermark(state_dir: Path, source_id: str) -> dict[str, Any]:
    """The last committed watermark of a source; empty when it was never harvested."""
    path = watermark_path(state_dir, source_id)
    if not path.exists():
        return {}
    stored = orjson.loads(path.read_bytes())
    return dict(stored["watermark"])


def commit_watermark(state_dir: Path, source_id: str, watermark: dict[str, Any], run_id: str) -> None:
    """Durably replace the source's watermark (temp file, fsync, rename)."""
    payload = {"source": source_id, "watermark": watermark, "run_id": run_id}
    line = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    write_atomic(watermark_path(state_dir, source_id), [line], tmp_written="watermark_tmp_written")
