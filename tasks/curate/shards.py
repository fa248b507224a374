"""Row shards: cut a frame into contiguous pieces, run the same work on each, put them back in order.

The funnel's per-record steps judge each row alone, so they can run on shards
anywhere (threads, Dask workers) and give the same rows as one pass, as long
as the pieces are joined back in shard order. A `ShardMap` is what runs the
work: `serial_map` here, in this process; `flywheel.runtime.execution` runs
each piece as a Prefect task on the configured task runner. Either returns
results in the order the work was given, never in completion order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Protocol, TypeVar

import pandas as pd

T = TypeVar("T")


class ShardMap(Protocol):
    """Runs zero-argument pieces of work (picklable, for process runners); results in the given order."""

    def __call__(self, step: str, work: Sequence[Callable[[], T]]) -> list[T]: ...


def serial_map(step: str, work: Sequence[Callable[[], T]]) -> list[T]:
    """Run each piece here, one after the other (`step` names them for runners that show it)."""
    return [piece() for piece in work]


def row_shards(frame: pd.DataFrame, shards: int) -> list[pd.DataFrame]:
    """`frame` as at most `shards` contiguous pieces of near-equal length, in row order.

    One shard is the frame itself; an empty frame is one empty shard (its dtypes travel).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    n = min(shards, len(frame))
    if n <= 1:
        return [frame]
    bounds = [len(frame) * i // n for i in range(n + 1)]
    return [frame.iloc[start:stop].reset_index(drop=True) for start, stop in pairwise(bounds)]


def concat_rows(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Shards back as one frame, in shard order, with a fresh index (the inverse of `row_shards`)."""
    if len(parts) == 1:
        return parts[0]
    # Empty pieces add no rows; leaving them out keeps pandas from re-deciding dtypes.
    filled = [part for part in parts if len(part)] or list(parts[:1])
    return pd.concat(filled, ignore_index=True) if len(filled) > 1 else filled[0].reset_index(drop=True)
