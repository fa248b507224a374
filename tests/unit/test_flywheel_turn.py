"""The flywheel turn's bookkeeping: count what was harvested, end early when nothing is new."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.flywheel.turn import count_raw_records, load_state, nothing_to_learn, save_state


def test_raw_records_are_counted_over_partitions_without_the_quarantine(tmp_path: Path) -> None:
    (tmp_path / "part-a.jsonl").write_text('{"a": 1}\n{"a": 2}\n\n')
    (tmp_path / "part-b.jsonl").write_text('{"b": 1}\n')
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "part-a.jsonl").write_text('{"bad": 1}\n')
    assert count_raw_records(tmp_path) == 3, "two partitions, blank lines and the quarantine not counted"
    assert count_raw_records(tmp_path / "missing") == 0, "no raw dir yet: nothing harvested"


def test_state_round_trips_and_is_absent_before_the_first_turn(tmp_path: Path) -> None:
    assert load_state(tmp_path) is None, "no completed turn yet"
    saved = save_state(tmp_path, 5400, "run-1")
    assert load_state(tmp_path) == saved, "the state reads back as written"
    assert not list(tmp_path.glob("*.partial")), "no half-written file is left"


@pytest.mark.parametrize(
    ("raw", "last", "minimum", "ends_early"),
    [
        (5400, None, 100, False),  # the first turn always runs when there is data
        (0, None, 100, True),  # ... and ends early when there is none
        (5450, 5400, 100, True),  # 50 new < 100
        (5500, 5400, 100, False),  # 100 new: enough
        (5400, 5400, 0, False),  # min 0: every turn runs
    ],
)
def test_a_turn_ends_early_only_with_too_little_new_data(
    tmp_path: Path, raw: int, last: int | None, minimum: int, ends_early: bool
) -> None:
    state = save_state(tmp_path, last, "run-1") if last is not None else None
    reason = nothing_to_learn(raw, state, minimum)
    assert (reason is not None) == ends_early, f"raw={raw} last={last} min={minimum}: {reason}"
    if reason is not None:
        assert "nothing to learn" in reason, f"the note says why: {reason}"
