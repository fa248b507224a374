"""What a harvest wrote: request ids in the valid partitions, entries in the quarantine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def harvested_records(raw_dir: Path) -> list[dict[str, Any]]:
    """Every record in every valid partition, in partition then line order (duplicates kept)."""
    return [
        orjson.loads(row)
        for part in sorted(raw_dir.glob("part-*.jsonl"))
        for row in part.read_bytes().splitlines()
    ]


def harvested_ids(raw_dir: Path) -> list[str]:
    """Every request id in every valid partition (duplicates kept, to count them)."""
    return [record["request_id"] for record in harvested_records(raw_dir)]


def quarantined(raw_dir: Path) -> list[dict[str, Any]]:
    """Every quarantine entry of every run."""
    return [
        orjson.loads(row)
        for part in sorted((raw_dir / "quarantine").glob("part-*.jsonl"))
        for row in part.read_bytes().splitlines()
    ]
