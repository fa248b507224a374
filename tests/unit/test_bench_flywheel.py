"""The arithmetic of bench/bench_flywheel.py: span unions and a turn's orchestration overhead."""

from __future__ import annotations

import pytest

from flywheel.runtime.timing import (
    Span,
    StageSpans,
    covered_seconds,
    gaps,
    merge_spans,
    turn_overhead,
    uncovered_seconds,
)


@pytest.mark.parametrize(
    ("spans", "merged"),
    [
        ([], []),
        ([(0.0, 1.0), (2.0, 3.0)], [(0.0, 1.0), (2.0, 3.0)]),  # apart: kept apart
        ([(2.0, 3.0), (0.0, 1.0)], [(0.0, 1.0), (2.0, 3.0)]),  # out of order: sorted
        ([(0.0, 2.0), (1.0, 3.0)], [(0.0, 3.0)]),  # overlapping: one span
        ([(0.0, 5.0), (1.0, 2.0)], [(0.0, 5.0)]),  # nested: the outer one
        ([(0.0, 1.0), (1.0, 2.0)], [(0.0, 2.0)]),  # touching: one span
        ([(1.0, 1.0), (3.0, 2.0)], []),  # empty and reversed: dropped
    ],
)
def test_spans_merge_into_their_sorted_disjoint_union(spans: list[Span], merged: list[Span]) -> None:
    assert merge_spans(spans) == merged, f"union of {spans}"


@pytest.mark.parametrize(
    ("spans", "window", "seconds"),
    [
        ([(0.0, 1.0), (2.0, 4.0)], None, 3.0),  # sequential tasks: the sum of their durations
        ([(0.0, 3.0), (1.0, 4.0)], None, 4.0),  # concurrent tasks: the union, not the sum (6)
        ([(-2.0, 1.0), (9.0, 12.0)], (0.0, 10.0), 2.0),  # clipped to the window
        ([(20.0, 30.0)], (0.0, 10.0), 0.0),  # outside the window: nothing
    ],
)
def test_covered_seconds_count_concurrent_time_once(
    spans: list[Span], window: Span | None, seconds: float
) -> None:
    assert covered_seconds(spans, window) == pytest.approx(seconds), f"{spans} within {window}"


def test_the_uncovered_part_of_a_window_is_its_overhead() -> None:
    # given a 10 s subflow whose two tasks overlap between 2 s and 7 s
    window, tasks = (0.0, 10.0), [(2.0, 5.0), (4.0, 7.0)]
    # then 5 s are inside a task and 5 s are overhead
    assert uncovered_seconds(window, tasks) == pytest.approx(5.0), "10 s minus the 5 s union"
    assert uncovered_seconds(window, []) == pytest.approx(10.0), "a flow without tasks is all overhead"
    assert uncovered_seconds((5.0, 4.0), tasks) == 0.0, "a reversed window has no time at all"


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([], [(0.0, 10.0)]),  # nothing ran: the whole window
        ([(2.0, 5.0), (4.0, 7.0)], [(0.0, 2.0), (7.0, 10.0)]),  # overlapping tasks leave no gap between
        ([(-1.0, 3.0), (6.0, 12.0)], [(3.0, 6.0)]),  # spans sticking out are clipped
        ([(0.0, 10.0)], []),  # fully covered: no gap
    ],
)
def test_gaps_are_the_uncovered_parts_of_the_window_in_order(spans: list[Span], expected: list[Span]) -> None:
    found = gaps((0.0, 10.0), spans)
    assert found == expected, f"gaps of {spans}"
    assert sum(e - s for s, e in found) == pytest.approx(uncovered_seconds((0.0, 10.0), spans)), "same total"


def test_a_turns_overhead_splits_into_its_stages_and_the_parent_flow() -> None:
    # given a 100 s turn: a task of its own, then two stages, each with gaps around its tasks
    stages = [
        StageSpans("harvest", (10.0, 30.0), [(11.0, 29.0)]),  # 2 s overhead
        StageSpans("retrain", (31.0, 95.0), [(32.0, 60.0), (50.0, 94.0)]),  # overlapping: 2 s overhead
    ]
    own = [(1.0, 9.0), (96.0, 99.0)]  # check-new-data, complete-turn
    # when its overhead is computed
    result = turn_overhead((0.0, 100.0), stages, own)
    # then each part is the time outside tasks, and the parts add up to the total
    assert result.stages == pytest.approx((2.0, 2.0)), f"per stage: {result.stages}"
    assert result.parent == pytest.approx(5.0), "0-1, 9-10, 30-31, 95-96, 99-100 are the parent's own"
    assert result.total == pytest.approx(9.0), "100 s minus 91 s inside tasks"
    assert sum(result.stages) + result.parent == pytest.approx(result.total), "the split is complete"
    assert result.share == pytest.approx(0.09), "9 s of a 100 s turn"
    assert stages[1].in_tasks == pytest.approx(62.0), "the union of retrain's tasks, not their 72 s sum"


def test_an_empty_turn_has_no_overhead_share() -> None:
    result = turn_overhead((5.0, 5.0), [])
    assert (result.wall, result.total, result.share) == (0.0, 0.0, 0.0), f"nothing to divide: {result}"
