"""One turn of the flywheel: whether there is anything new to learn from, and what the last turn saw.

A turn that completes records how many raw records it learnt from. The next
turn compares: fewer than `min_new_records` new ones ends it early as a
success ("nothing to learn"). A turn that fails records nothing, so re-running
it goes through the chain again, where each stage resumes instead of redoing
its work (harvest by watermark, curation deterministic, training from its
checkpoints or its finished result, evaluation skipped when the candidate is
already registered).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

STATE_FILE = "last_turn.json"


@dataclass(frozen=True)
class TurnState:
    """What the last completed turn learnt from."""

    raw_records: int
    retrain_run_id: str | None
    completed_at: str


def count_raw_records(raw_dir: Path) -> int:
    """Valid records in the raw partitions (quarantine excluded): one JSON line each."""
    total = 0
    for part in sorted(raw_dir.glob("part-*.jsonl")):
        with part.open("rb") as handle:
            total += sum(1 for line in handle if line.strip())
    return total


def load_state(folder: Path) -> TurnState | None:
    """The last completed turn's state, or None before the first one."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return TurnState(**json.loads(path.read_text(encoding="utf-8")))


def save_state(folder: Path, raw_records: int, retrain_run_id: str | None) -> TurnState:
    """Record a completed turn (written atomically: a crash leaves the old state)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = TurnState(raw_records, retrain_run_id, datetime.now(UTC).isoformat(timespec="seconds"))
    partial = folder / (STATE_FILE + ".partial")
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, folder / STATE_FILE)
    return state


def nothing_to_learn(raw_records: int, last: TurnState | None, min_new_records: int) -> str | None:
    """Why this turn can end early, or None when there is enough new data (or no turn completed yet)."""
    if last is None:
        return None if raw_records > 0 else "no raw records yet: harvest found nothing to learn from"
    new = raw_records - last.raw_records
    if new < min_new_records:
        return (
            f"{new} new raw records since the last turn ({last.completed_at}), fewer than "
            f"flywheel.min_new_records={min_new_records}: nothing to learn"
        )
    return None
