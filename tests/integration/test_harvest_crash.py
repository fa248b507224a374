"""Harvest under a real kill -9: at every step of a run, then a re-run harvests each record exactly once.

A child process (tests/helpers/harvest_child.py) runs the harvest with
`FLYWHEEL_TEST_CRASH_AT` naming a `crash_point`, where it SIGKILLs itself: no
`finally`, no flush, files left as the kernel has them. The test then re-runs
the harvest normally, with or without new records having arrived meanwhile, and
counts every request id across every partition. (Integration tier for time only:
two dozen child processes; the in-process crash tests in tests/unit/test_harvest.py
are the fast check.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tasks.harvest import make_source, run_harvest
from tasks.harvest.harvest import partition_paths
from tasks.harvest.partitions import CRASH_ENV
from tasks.harvest.partitions import run_id as make_run_id
from tasks.harvest.watermark import load_watermark
from tests.helpers.raw_partitions import harvested_ids, quarantined
from tests.helpers.request_records import make_record

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARE = 0.5  # the malformed threshold of every run here: one bad line per batch stays under it

# Each step of a run, in order; what is on disk when the run is killed there.
CRASH_POINTS: list[tuple[str, bool, bool]] = [
    # point, the run's valid partition is in place, the watermark has moved
    ("after_read", False, False),
    ("after_quarantine", False, False),
    ("partition_tmp_written", False, False),
    ("after_partition", True, False),
    ("watermark_tmp_written", True, False),
    ("after_commit", True, True),
]
POINT_IDS = [point for point, *_ in CRASH_POINTS]


def kill_harvest_at(point: str, kind: str, url: str, tmp_path: Path) -> None:
    """Run one harvest in a child that SIGKILLs itself at `point`; check that it died there."""
    dirs = [str(tmp_path / "raw"), str(tmp_path / "state")]
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.harvest_child",
            kind,
            url,
            *dirs,
            "--max-malformed-share",
            str(SHARE),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), CRASH_ENV: point},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, (
        f"the child should die by SIGKILL at {point}, got rc {child.returncode}:\n"
        f"{child.stdout}{child.stderr}"
    )


def assert_state_at_death(
    point: str,
    partition_in_place: bool,
    watermark_moved: bool,
    kind: str,
    url: str,
    start: dict[str, Any],
    tmp_path: Path,
) -> None:
    """What the killed run left: its partition (or not) and the watermark (moved or not)."""
    source = make_source(kind, url)
    part, _ = partition_paths(tmp_path / "raw", make_run_id(source.source_id, start))
    assert part.exists() == partition_in_place, f"{point}: partition in place should be {partition_in_place}"
    moved = load_watermark(tmp_path / "state", source.source_id) != start
    assert moved == watermark_moved, f"{point}: watermark moved should be {watermark_moved}"


def assert_exactly_once(expected_ids: list[str], expected_bad: int, point: str, tmp_path: Path) -> None:
    """Every record once across all partitions, every bad line once in the quarantine, no temp files."""
    counts = Counter(harvested_ids(tmp_path / "raw"))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    lost = sorted(set(expected_ids) - counts.keys())
    extra = sorted(counts.keys() - set(expected_ids))
    assert not (duplicated or lost or extra), (
        f"{point}: duplicated {duplicated}, lost {lost}, unexpected {extra}"
    )
    positions = Counter(entry["position"] for entry in quarantined(tmp_path / "raw"))
    assert len(positions) == expected_bad and set(positions.values()) <= {1}, (
        f"{point}: each bad line once in the quarantine, got {dict(positions)}"
    )
    leftovers = sorted(p.name for p in tmp_path.rglob(".*.tmp") if "incoming" not in p.parts)
    assert leftovers == [], f"{point}: temp files left after the re-run: {leftovers}"


# -- files: JSONL and Parquet ------------------------------------------------------------------------


def jsonl(numbers: range) -> bytes:
    return b"".join(make_record(i).model_dump_json().encode() + b"\n" for i in numbers)


def write_chats(path: Path, numbers: range) -> None:
    rows = [
        {
            "request_id": f"chat-{i:04d}",
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
        }
        for i in numbers
    ]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)


@pytest.mark.parametrize("grows", [False, True], ids=["same-source", "source-grows"])
@pytest.mark.parametrize(("point", "partition_in_place", "watermark_moved"), CRASH_POINTS, ids=POINT_IDS)
def test_files_harvest_killed_at_each_step_then_rerun_harvests_each_record_once(
    point: str, partition_in_place: bool, watermark_moved: bool, grows: bool, tmp_path: Path
) -> None:
    # given a JSONL and a Parquet file, harvested once
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    (inbox / "a.jsonl").write_bytes(jsonl(range(3)))
    write_chats(inbox / "b.parquet", range(3))
    url = str(inbox)
    run_harvest(make_source("files", url), tmp_path / "raw", tmp_path / "state", max_malformed_share=SHARE)
    start = load_watermark(tmp_path / "state", make_source("files", url).source_id)
    # and then new records: lines appended (one bad), the Parquet file rewritten longer, a new file
    with (inbox / "a.jsonl").open("ab") as out:
        out.write(jsonl(range(3, 4)) + b"{bad\n" + jsonl(range(4, 5)))
    write_chats(inbox / "b.parquet", range(6))
    (inbox / "c.jsonl").write_bytes(jsonl(range(5, 7)))
    # when a harvest is killed at the step
    kill_harvest_at(point, "files", url, tmp_path)
    assert_state_at_death(point, partition_in_place, watermark_moved, "files", url, start, tmp_path)
    # and (maybe) more arrives before the re-run: a line, a bad line, another Parquet file
    expected = [f"req-{i:06d}" for i in range(7)] + [f"chat-{i:04d}" for i in range(6)]
    if grows:
        with (inbox / "c.jsonl").open("ab") as out:
            out.write(jsonl(range(7, 8)) + b'{"request_id": 12}\n')
        write_chats(inbox / "d.parquet", range(100, 103))
        expected += ["req-000007"] + [f"chat-{i:04d}" for i in range(100, 103)]
    run_harvest(make_source("files", url), tmp_path / "raw", tmp_path / "state", max_malformed_share=SHARE)
    # then every record is in exactly one partition, and each bad line in one quarantine entry
    assert_exactly_once(expected, 2 if grows else 1, point, tmp_path)


def test_files_harvest_killed_at_every_step_in_turn_then_rerun(tmp_path: Path) -> None:
    # given an inbox that grows before each of six runs, each killed at the next step
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    expected: list[str] = []
    for n, point in enumerate(POINT_IDS):
        (inbox / f"batch-{n}.jsonl").write_bytes(jsonl(range(10 * n, 10 * n + 3)))
        expected += [f"req-{i:06d}" for i in range(10 * n, 10 * n + 3)]
        kill_harvest_at(point, "files", str(inbox), tmp_path)
    # when harvested normally
    run_harvest(make_source("files", str(inbox)), tmp_path / "raw", tmp_path / "state")
    # then all 18 records are there once
    assert_exactly_once(expected, 0, "every step in turn", tmp_path)


# -- a SQL table -------------------------------------------------------------------------------------


def insert_chats(engine: sa.Engine, numbers: range, messages: str | None = None) -> None:
    rows = [
        {
            "request_id": f"chat-{i:04d}",
            "messages": messages or orjson.dumps([{"role": "user", "content": f"q{i}"}]).decode(),
        }
        for i in numbers
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO chats (request_id, messages) VALUES (:request_id, :messages)"), rows
        )


@pytest.mark.parametrize(("point", "partition_in_place", "watermark_moved"), CRASH_POINTS, ids=POINT_IDS)
def test_sql_harvest_killed_at_each_step_then_rerun_harvests_each_row_once(
    point: str, partition_in_place: bool, watermark_moved: bool, tmp_path: Path
) -> None:
    # given a SQLite table of 4 chats, harvested once, then 4 more (one bad) inserted
    db = f"sqlite:///{tmp_path / 'chats.db'}"
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE chats (id INTEGER PRIMARY KEY, request_id TEXT, messages TEXT)"))
    insert_chats(engine, range(4))
    url = f"{db}?table=chats&key=id"
    run_harvest(make_source("sql", url), tmp_path / "raw", tmp_path / "state", max_malformed_share=SHARE)
    start = load_watermark(tmp_path / "state", make_source("sql", url).source_id)
    insert_chats(engine, range(4, 7))
    insert_chats(engine, range(7, 8), messages="[{oops")
    # when a harvest is killed at the step, and 3 more rows arrive before the re-run
    kill_harvest_at(point, "sql", url, tmp_path)
    assert_state_at_death(point, partition_in_place, watermark_moved, "sql", url, start, tmp_path)
    insert_chats(engine, range(8, 11))
    engine.dispose()
    run_harvest(make_source("sql", url), tmp_path / "raw", tmp_path / "state", max_malformed_share=SHARE)
    # then every valid row is in exactly one partition, the bad one in one quarantine entry
    expected = [f"chat-{i:04d}" for i in [*range(7), *range(8, 11)]]
    assert_exactly_once(expected, 1, point, tmp_path)
