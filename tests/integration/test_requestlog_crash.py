"""The request log under a killed writer: acknowledged records survive, none are duplicated.

A child process (tests/helpers/requestlog_child.py) submits records through a
BatchWriter and prints each id once `submit` returns, as a gateway answers its
client. SIGKILL may lose only the unflushed window (docs/request-log.md);
SIGTERM, a clean stop, loses nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from flywheel.requestlog import BatchWriter, RequestLog
from flywheel.settings import RequestLogParams
from tests.helpers.requestlog_child import record, request_id

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FLUSH_SECONDS = 0.2
# Scheduling slack on a busy 2-core machine on top of flush_seconds: a batch's own write time,
# the pipe to this process, thread wake-ups.
MARGIN_SECONDS = 1.0


@dataclass
class Acks:
    """Ids the child acknowledged, with the monotonic time this process read each."""

    at: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def start_child(url: str, rate: float) -> tuple[subprocess.Popen[str], Acks, threading.Thread]:
    """Start the child writer; a thread records every acknowledged id as it arrives."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.requestlog_child",
            url,
            "--rate",
            str(rate),
            "--flush-seconds",
            str(FLUSH_SECONDS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acks = Acks()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.strip()
            acks.lines.append(line)
            if line.startswith("crash-"):
                acks.at[line] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return child, acks, reader


def wait_for_acks(acks: Acks, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(acks.at) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(acks.at) >= n, f"child acknowledged only {len(acks.at)} of {n} records in {timeout}s"


def ids_in(url: str) -> list[str]:
    """Every request id in the log, straight from the table, duplicates included."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ids = [row[0] for row in conn.execute(sa.text("SELECT request_id FROM requests ORDER BY seq"))]
    engine.dispose()
    return ids


def test_sigkill_loses_at_most_the_unflushed_window_and_never_duplicates(tmp_path: Path) -> None:
    # given a child writing 2,000 acknowledged records/s while this process harvests by watermark
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    child, acks, reader = start_child(url, rate=2000)
    wait_for_acks(acks, 1)
    log = RequestLog(url)
    harvested: list[str] = []
    watermark = 0
    wait_for_acks(acks, 4000)
    while page := log.read_since(watermark, 500):
        harvested.extend(row.record.request_id for row in page)
        watermark = page[-1].seq
    # when the child is killed mid-load
    killed_at = time.monotonic()
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    reader.join(10)
    while page := log.read_since(watermark, 500):
        harvested.extend(row.record.request_id for row in page)
        watermark = page[-1].seq
    # then every record acknowledged more than flush_seconds + margin before the kill is logged, once
    stored = ids_in(url)
    old_enough = [rid for rid, at in acks.at.items() if at <= killed_at - FLUSH_SECONDS - MARGIN_SECONDS]
    missing_old = sorted(set(old_enough) - set(stored))
    lost = sorted(set(acks.at) - set(stored))
    assert old_enough, "the test should have acknowledged records older than the window"
    assert not missing_old, f"{len(missing_old)} acknowledged records outside the window were lost"
    assert len(stored) == len(set(stored)), "no request id should be stored twice"
    assert len(lost) <= 2000 * (FLUSH_SECONDS + MARGIN_SECONDS), f"lost {len(lost)}: more than the window"
    # and nothing the child never submitted is there (at most the one submitted before its print)
    submitted = {request_id(i) for i in range(len(acks.at) + 1)}
    assert set(stored) <= submitted, "the log should hold only records the child submitted"
    # and the concurrent harvest saw every stored row exactly once, in order
    assert harvested == stored, "read_since during the writes should see every row once, in seq order"

    # when a restarted writer appends every acknowledged id again (a replaying client)
    writer = BatchWriter(log, RequestLogParams(flush_seconds=FLUSH_SECONDS))
    for i in range(len(acks.at)):
        writer.submit(record(i))
    writer.close(timeout=60)
    # then each id is logged exactly once and the replays already there count as duplicates
    after = ids_in(url)
    assert len(after) == len(set(after)), "a restarted writer should create no duplicates"
    assert set(acks.at) <= set(after), "after the replay every acknowledged record should be logged"
    assert writer.stats["duplicates"] == len(set(acks.at) & set(stored)), (
        f"duplicates miscounted: {writer.stats}"
    )
    log.close()


def test_sigterm_is_a_clean_stop_that_loses_nothing(tmp_path: Path) -> None:
    # given a child writing acknowledged records
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    child, acks, reader = start_child(url, rate=2000)
    wait_for_acks(acks, 2000)
    # when it is asked to stop
    child.send_signal(signal.SIGTERM)
    rc = child.wait(60)
    reader.join(10)
    # then it flushed: every acknowledged record is logged exactly once
    stored = ids_in(url)
    assert rc == 0, f"the child should exit cleanly, got {rc}"
    assert acks.lines[-1] == "closed", f"the child should close its writer, last line {acks.lines[-1:]}"
    assert set(acks.at) <= set(stored), f"{len(set(acks.at) - set(stored))} acknowledged records lost"
    assert len(stored) == len(set(stored)), "no request id should be stored twice"
