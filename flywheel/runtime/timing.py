"""Time spans: their union, and how much of a window no span covers (orchestration overhead).

Pure functions over (start, end) pairs in seconds; `bench/bench_flywheel.py` feeds them
the start and end times of a flow run, its subflow runs and their task runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Span = tuple[float, float]


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """The union of the spans as sorted, disjoint spans; empty and reversed spans are dropped."""
    merged: list[Span] = []
    for start, end in sorted((s, e) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def covered_seconds(spans: Iterable[Span], window: Span | None = None) -> float:
    """Seconds inside at least one span (concurrent spans count once), clipped to `window` if given."""
    if window is not None:
        low, high = window
        spans = ((max(start, low), min(end, high)) for start, end in spans)
    return sum(end - start for start, end in merge_spans(spans))


def gaps(window: Span, spans: Iterable[Span]) -> list[Span]:
    """The parts of `window` that no span covers, in order."""
    low, high = window
    found: list[Span] = []
    cursor = low
    for start, end in merge_spans((max(s, low), min(e, high)) for s, e in spans):
        if start > cursor:
            found.append((cursor, start))
        cursor = max(cursor, end)
    if high > cursor:
        found.append((cursor, high))
    return found


def uncovered_seconds(window: Span, spans: Iterable[Span]) -> float:
    """Seconds of `window` that no span covers: for a flow run and its task runs, its overhead."""
    return max(0.0, window[1] - window[0]) - covered_seconds(spans, window)


@dataclass(frozen=True)
class StageSpans:
    """One stage (a subflow run) of a turn: its own span and the spans of the task runs inside it."""

    name: str
    span: Span
    tasks: Sequence[Span] = ()

    @property
    def wall(self) -> float:
        return max(0.0, self.span[1] - self.span[0])

    @property
    def in_tasks(self) -> float:
        """Seconds inside at least one of its task runs."""
        return covered_seconds(self.tasks, self.span)

    @property
    def overhead(self) -> float:
        """Seconds of the stage spent outside every task run."""
        return self.wall - self.in_tasks


@dataclass(frozen=True)
class TurnOverhead:
    """Where a turn's time outside its tasks went: in each stage, and in the parent flow itself."""

    wall: float
    stages: tuple[float, ...]  # per stage, in the order given
    parent: float  # the parent flow's time outside its stages and its own tasks
    total: float  # the turn's time outside every task run

    @property
    def share(self) -> float:
        """The overhead as a fraction of the turn's wall time (0 for an empty turn)."""
        return self.total / self.wall if self.wall > 0 else 0.0


def turn_overhead(turn: Span, stages: Sequence[StageSpans], own_tasks: Iterable[Span] = ()) -> TurnOverhead:
    """A turn's overhead: its wall time minus the union of every task run in it, split by where it fell.

    `own_tasks` are the parent flow's own task runs (not the wrappers of its subflow runs).
    When stages neither overlap each other nor stick out of the turn, `sum(stages) + parent == total`.
    """
    own = list(own_tasks)
    every_task = [span for stage in stages for span in stage.tasks] + own
    parent = uncovered_seconds(turn, [stage.span for stage in stages] + own)
    return TurnOverhead(
        wall=max(0.0, turn[1] - turn[0]),
        stages=tuple(stage.overhead for stage in stages),
        parent=parent,
        total=uncovered_seconds(turn, every_task),
    )
