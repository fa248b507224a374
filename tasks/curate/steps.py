"""What every curate step returns, and the funnel that adds them up.

Each step is a plain function `frame -> StepResult`: the rows it kept, and the
request ids it dropped with a reason each. The funnel chains the counts and
checks the books balance (records in = kept + every drop), so no record leaves
curation without a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.curate.shards import concat_rows


@dataclass(frozen=True)
class StepResult:
    """One step's output: kept rows, dropped ids by reason, and numbers worth reporting."""

    step: str
    kept: pd.DataFrame
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> request ids
    stats: dict[str, int] = field(default_factory=dict)  # e.g. redactions per entity
    # Every reason the step checks, in its order: shards of one step merge their drops in it.
    reasons: tuple[str, ...] = ()

    @property
    def n_in(self) -> int:
        return len(self.kept) + self.n_dropped

    @property
    def n_dropped(self) -> int:
        return sum(len(ids) for ids in self.dropped.values())

    @classmethod
    def split(
        cls,
        step: str,
        frame: pd.DataFrame,
        masks: Mapping[str, np.ndarray],
        stats: dict[str, int] | None = None,
    ) -> StepResult:
        """Drop the rows flagged by each mask; a row flagged twice counts for its first reason."""
        taken = np.zeros(len(frame), dtype=bool)
        dropped: dict[str, list[str]] = {}
        ids = frame["request_id"].to_numpy()
        for reason, mask in masks.items():
            mine = np.asarray(mask, dtype=bool) & ~taken
            taken |= mine
            if mine.any():
                dropped[reason] = ids[mine].tolist()
        if not taken.any():
            return cls(step, frame, dropped, dict(stats or {}), tuple(masks))
        kept = frame.loc[~taken]  # a new frame: the rows are copied once, here
        # Not reset_index(drop=True): without copy-on-write it deep-copies every column
        # again (a third of a second per step on 1M rows, mostly the object columns).
        kept.index = pd.RangeIndex(len(kept))
        return cls(step, kept, dropped, dict(stats or {}), tuple(masks))

    @classmethod
    def concat(cls, shards: Sequence[StepResult]) -> StepResult:
        """One step's results on consecutive row shards as the result of one pass over all rows.

        Kept rows and dropped ids follow shard order, reasons the step's own order, stats add up:
        the same result, byte for byte, as the step on the whole frame.
        """
        if not shards:
            raise ValueError("no shards to concatenate")
        first = shards[0]
        if len(shards) == 1:
            return first
        if any(shard.step != first.step for shard in shards):
            raise ValueError(f"shards of different steps: {sorted({shard.step for shard in shards})}")
        order = list(dict.fromkeys([*first.reasons, *(r for shard in shards for r in shard.dropped)]))
        dropped = {
            reason: [request_id for shard in shards for request_id in shard.dropped.get(reason, [])]
            for reason in order
            if any(reason in shard.dropped for shard in shards)
        }
        stats: dict[str, int] = {}
        for shard in shards:
            for key, value in shard.stats.items():
                stats[key] = stats.get(key, 0) + value
        kept = concat_rows([shard.kept for shard in shards])
        return cls(first.step, kept, dropped, stats, first.reasons)


class FunnelMismatch(AssertionError):
    """The books do not balance: a step lost or invented records."""


@dataclass
class Funnel:
    """The chain of steps of one curation run, in order."""

    n_in: int
    steps: list[StepResult] = field(default_factory=list)

    def add(self, result: StepResult) -> pd.DataFrame:
        """Record a step and hand its kept rows to the next; raise if its counts do not chain."""
        expected = len(self.steps[-1].kept) if self.steps else self.n_in
        if result.n_in != expected:
            raise FunnelMismatch(
                f"step {result.step!r} accounts for {result.n_in} records but received {expected}"
            )
        self.steps.append(result)
        return result.kept

    @property
    def n_out(self) -> int:
        return len(self.steps[-1].kept) if self.steps else self.n_in

    def dropped_by_reason(self) -> dict[str, int]:
        """`step.reason -> count` over every step, in funnel order."""
        return {
            f"{result.step}.{reason}": len(ids)
            for result in self.steps
            for reason, ids in result.dropped.items()
        }

    def check(self) -> None:
        """Records in = records out + every drop, or `FunnelMismatch`."""
        dropped = sum(self.dropped_by_reason().values())
        if self.n_in != self.n_out + dropped:
            raise FunnelMismatch(f"{self.n_in} in != {self.n_out} out + {dropped} dropped")

    def table(self) -> list[dict[str, object]]:
        """One row per step: records in and out, drops by reason, step stats."""
        return [
            {
                "step": result.step,
                "in": result.n_in,
                "out": len(result.kept),
                "dropped": {reason: len(ids) for reason, ids in result.dropped.items()},
                "stats": result.stats,
            }
            for result in self.steps
        ]
