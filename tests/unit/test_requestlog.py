"""The request log: the store's ordering, idempotence and feedback join; the batch writer's guarantees."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from flywheel.requestlog import (
    BatchWriter,
    FeedbackItem,
    RequestLog,
    WriterClosedError,
    open_request_log,
)
from flywheel.schemas import Feedback, RequestRecord
from flywheel.settings import RequestLogParams
from tests.helpers.request_records import T0, make_record, read_all


@pytest.fixture
def log(tmp_path: Path) -> Iterator[RequestLog]:
    store = open_request_log(f"sqlite:///{tmp_path / 'nested' / 'requests.db'}")
    yield store
    store.close()


def params(**changes: object) -> RequestLogParams:
    return RequestLogParams.model_validate({"batch_size": 64, "flush_seconds": 0.05, **changes})


# -- the store ---------------------------------------------------------------------------------------


def test_sqlite_store_is_created_in_wal_mode_with_full_sync(log: RequestLog, tmp_path: Path) -> None:
    # given a log opened on a path whose folder did not exist
    path = tmp_path / "nested" / "requests.db"
    # when the file is inspected directly
    with sqlite3.connect(path) as conn:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    # then it is a WAL database holding both tables
    assert journal == "wal", f"journal_mode should be wal, got {journal}"
    assert {"requests", "feedback"} <= tables, f"tables missing, found {sorted(tables)}"
    assert log.count() == 0, "a new log should be empty"


def test_append_then_read_since_returns_the_exact_records_in_order(log: RequestLog) -> None:
    # given records appended in two transactions
    records = [make_record(i) for i in range(10)]
    # when appended and read back
    inserted = log.append(records[:4]) + log.append(records[4:])
    rows = log.read_since(0, 100)
    # then every record comes back equal, in append order, with increasing seq
    assert inserted == 10, f"append should report 10 inserted rows, got {inserted}"
    assert [row.record for row in rows] == records, "records should round-trip exactly, in order"
    seqs = [row.seq for row in rows]
    assert seqs == sorted(set(seqs)), f"seq should be strictly increasing, got {seqs}"
    assert log.count() == 10, f"count should be 10, got {log.count()}"


@pytest.mark.parametrize("limit", [1, 3, 7, 25])
def test_paging_by_watermark_covers_every_row_exactly_once(log: RequestLog, limit: int) -> None:
    # given 25 logged records
    records = [make_record(i) for i in range(25)]
    log.append(records)
    # when paged with a watermark and a limit
    pages = []
    watermark = 0
    while page := log.read_since(watermark, limit):
        pages.append(page)
        watermark = page[-1].seq
    ids = [row.record.request_id for page in pages for row in page]
    # then each page respects the limit and together they hold every id once, in order
    assert all(len(page) <= limit for page in pages), f"a page exceeded limit {limit}"
    assert ids == [r.request_id for r in records], "paging should cover every row exactly once, in order"


def test_read_since_is_stable_for_the_same_watermark(log: RequestLog) -> None:
    # given a log read once from a watermark
    log.append([make_record(i) for i in range(6)])
    first = log.read_since(2, 3)
    # when more rows arrive and the same watermark is read again
    log.append([make_record(i) for i in range(6, 9)])
    again = log.read_since(2, 3)
    # then the same rows come back
    assert first == again, "the same watermark and limit should return the same rows"
    assert log.read_since(10**9, 5) == [], "a watermark past the end should return nothing"


def test_read_since_rejects_a_limit_below_one(log: RequestLog) -> None:
    with pytest.raises(ValueError, match="limit"):
        log.read_since(0, 0)


def test_duplicate_request_ids_are_ignored(log: RequestLog) -> None:
    # given a logged record
    original = make_record(1)
    log.append([original])
    # when the same id is appended again (changed) alongside a new one
    inserted = log.append([make_record(1, response="changed"), make_record(2)])
    # then only the new one is inserted and the original is kept
    assert inserted == 1, f"only the new id should be inserted, got {inserted}"
    assert log.count() == 2, f"count should be 2, got {log.count()}"
    stored = log.get(original.request_id)
    assert stored is not None and stored.record == original, "the first write of an id should win"


def test_duplicates_within_one_append_are_inserted_once(log: RequestLog) -> None:
    inserted = log.append([make_record(1), make_record(1)])
    assert inserted == 1, f"a repeated id in one batch should insert once, got {inserted}"


def test_feedback_is_joined_latest_wins_even_when_it_arrives_first(log: RequestLog) -> None:
    # given feedback for req 1 given twice (out of order by time) and for req 2 before its record exists
    log.add_feedback(
        [
            FeedbackItem("req-000001", 1, "great", T0 + timedelta(minutes=5)),
            FeedbackItem("req-000001", -1, "wrong", T0 + timedelta(minutes=1)),
            FeedbackItem("req-000002", 0, None, T0),
        ]
    )
    # when the records are appended afterwards and read
    log.append([make_record(1), make_record(2), make_record(3)])
    by_id = {row.record.request_id: row.record.feedback for row in log.read_since(0, 10)}
    # then the feedback with the latest `at` is joined; no feedback gives None
    assert by_id["req-000001"] == Feedback(score=1, comment="great"), "latest `at` should win"
    assert by_id["req-000002"] == Feedback(score=0, comment=None), "feedback before its record should join"
    assert by_id["req-000003"] is None, "a request without feedback should have feedback None"
    fetched = log.get("req-000001")
    assert fetched is not None and fetched.record.feedback == by_id["req-000001"], "get should join too"


def test_feedback_at_the_same_time_is_ordered_by_arrival(log: RequestLog) -> None:
    log.append([make_record(1)])
    log.add_feedback([FeedbackItem("req-000001", -1, "first", T0)])
    log.add_feedback([FeedbackItem("req-000001", 1, "second", T0)])
    fetched = log.get("req-000001")
    assert fetched is not None and fetched.record.feedback == Feedback(score=1, comment="second"), (
        "with equal `at`, the later arrival should win"
    )


def test_get_unknown_request_is_none(log: RequestLog) -> None:
    assert log.get("nope") is None, "an id never logged should give None"


def test_nul_characters_in_indexed_fields_do_not_break_a_batch(log: RequestLog) -> None:
    # given a record whose indexed text holds a NUL (Postgres text rejects it)
    record = make_record(1, application="sup\x00port", response="a\x00b")
    # when appended and read
    log.append([record])
    rows = log.read_since(0, 1)
    # then the record round-trips unchanged (the JSON copy is exact)
    assert rows[0].record == record, "the stored record should be exact even with NUL characters"


def test_text_that_is_not_valid_unicode_is_stored_with_replacements(log: RequestLog) -> None:
    # given a record and feedback holding a lone surrogate (a client can send one as a JSON escape)
    lone = json.loads('"ok \\ud800 then"')
    log.append([make_record(1, response=lone)])
    log.add_feedback([FeedbackItem("req-000001", 1, lone + "\x00", T0)])
    # when read back
    stored = log.get("req-000001")
    # then the record is stored, with the invalid character replaced rather than the batch failing
    assert stored is not None, "a record with invalid Unicode should still be stored"
    assert stored.record.response == "ok ? then", (
        f"the lone surrogate should become '?': {stored.record.response!r}"
    )
    assert stored.record.feedback == Feedback(score=1, comment="ok ? then"), (
        "feedback text should be cleaned too"
    )


def test_naive_and_aware_timestamps_round_trip(log: RequestLog) -> None:
    records = [make_record(1, timestamp=datetime(2026, 1, 1, 12)), make_record(2)]
    log.append(records)
    assert [row.record for row in read_all(log)] == records, "timestamps should round-trip as given"


@pytest.mark.parametrize(
    ("url", "schema", "message"),
    [
        ("sqlite://", "analytics", "postgresql only"),
        ("postgresql+psycopg2://postgres@127.0.0.1/test", "bad;name", "identifier"),
        ("mysql://root@127.0.0.1/test", None, "sqlite and postgresql"),
    ],
)
def test_bad_configuration_is_refused(url: str, schema: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RequestLog(url, schema=schema)


def test_feedback_item_validates_its_score() -> None:
    with pytest.raises(ValueError, match="score"):
        FeedbackItem("req-1", 2, None, T0)  # type: ignore[arg-type]  # the invalid value under test


def test_in_memory_log_is_shared_across_threads() -> None:
    # given an in-memory log written from another thread
    store = RequestLog("sqlite://")
    thread = threading.Thread(target=store.append, args=([make_record(1)],))
    thread.start()
    thread.join()
    # then this thread sees the row
    assert store.count() == 1, "an in-memory log should be one database for all threads"
    store.close()


# -- the batch writer --------------------------------------------------------------------------------


def test_writer_close_makes_every_submitted_record_durable(log: RequestLog) -> None:
    # given a writer with small batches
    writer = BatchWriter(log, params(batch_size=16))
    records = [make_record(i) for i in range(300)]
    # when records are submitted and the writer is closed
    for record in records:
        writer.submit(record)
    writer.close()
    # then all are in the log and the counters add up
    stats = writer.stats
    assert [row.record for row in read_all(log)] == records, (
        "every submitted record should be logged, in order"
    )
    assert stats["submitted"] == 300 and stats["written"] == 300, f"counters off: {stats}"
    assert stats["pending"] == 0 and stats["errors"] == 0, f"nothing should be pending or failed: {stats}"
    assert stats["batches"] >= 300 / 16, f"batches should be at most batch_size: {stats}"


def test_writer_counts_duplicates_and_close_is_idempotent(log: RequestLog) -> None:
    log.append([make_record(1)])
    writer = BatchWriter(log, params())
    writer.submit(make_record(1))
    writer.submit(make_record(2))
    writer.close()
    writer.close()
    stats = writer.stats
    assert (stats["written"], stats["duplicates"]) == (1, 1), f"one new, one duplicate expected: {stats}"
    with pytest.raises(WriterClosedError):
        writer.submit(make_record(3))


def test_flush_returns_once_earlier_submits_are_durable(log: RequestLog) -> None:
    # given a writer that would otherwise wait a minute or 1000 records before writing
    writer = BatchWriter(log, params(batch_size=1000, flush_seconds=60))
    for i in range(5):
        writer.submit(make_record(i))
    # when flushed
    writer.flush(timeout=10)
    # then the records are already in the store
    assert log.count() == 5, f"flush should make all 5 durable, found {log.count()}"
    assert writer.stats["pending"] == 0, f"nothing should be pending after flush: {writer.stats}"
    writer.close()


def test_a_lone_record_is_written_within_flush_seconds(log: RequestLog) -> None:
    # given a writer with a short flush interval and large batches
    writer = BatchWriter(log, params(batch_size=1000, flush_seconds=0.05))
    # when one record is submitted and nobody flushes
    writer.submit(make_record(1))
    deadline = time.monotonic() + 5
    while log.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    # then the timer wrote it
    assert log.count() == 1, "a partial batch should be written once flush_seconds pass"
    writer.close()


def test_feedback_through_the_writer_is_joined(log: RequestLog) -> None:
    writer = BatchWriter(log, params())
    writer.submit_feedback(FeedbackItem("req-000001", 1, "thanks", T0))
    writer.submit(make_record(1))
    writer.close()
    fetched = log.get("req-000001")
    assert fetched is not None and fetched.record.feedback == Feedback(score=1, comment="thanks"), (
        "feedback submitted through the writer should be joined"
    )
    assert writer.stats["feedback_written"] == 1, f"feedback counter off: {writer.stats}"


class FlakyLog(RequestLog):
    """A store whose first `failures` appends raise, as a database hiccup would."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def append(self, records: Sequence[RequestRecord]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database went away")
        return super().append(records)


def test_failed_batches_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    # given a store that fails its first two appends
    flaky = FlakyLog(f"sqlite:///{tmp_path / 'flaky.db'}", failures=2)
    writer = BatchWriter(flaky, params(batch_size=10))
    records = [make_record(i) for i in range(50)]
    # when records are submitted and the writer closed
    for record in records:
        writer.submit(record)
    writer.close(timeout=30)
    # then every record is there once and the errors are counted
    stats = writer.stats
    assert [row.record for row in read_all(flaky)] == records, "a store hiccup should lose nothing"
    assert stats["errors"] == 2 and stats["last_error"] > 0, f"both failures should be counted: {stats}"
    assert "database went away" in (writer.last_error_message or ""), "the last error should be kept"
    assert stats["written"] == 50 and stats["duplicates"] == 0, f"counters off: {stats}"
    flaky.close()


class GatedLog(RequestLog):
    """A store whose appends wait until the test opens the gate."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append(self, records: Sequence[RequestRecord]) -> int:
        self.entered.set()
        self.gate.wait()
        return super().append(records)


def test_a_full_queue_blocks_submit_instead_of_dropping(tmp_path: Path) -> None:
    # given a stalled store and a writer holding at most 2 pending records
    gated = GatedLog(f"sqlite:///{tmp_path / 'gated.db'}")
    writer = BatchWriter(gated, params(batch_size=1, max_pending=2))
    writer.submit(make_record(0))
    assert gated.entered.wait(5), "the writer should have taken the first record"
    writer.submit(make_record(1))
    writer.submit(make_record(2))
    # when one more record is submitted
    blocked = threading.Thread(target=writer.submit, args=(make_record(3),))
    blocked.start()
    blocked.join(0.3)
    # then submit waits; once the store recovers everything is written
    assert blocked.is_alive(), "submit should block while max_pending records wait"
    with pytest.raises(TimeoutError, match="not yet durable"):
        writer.flush(timeout=0.1)
    gated.gate.set()
    blocked.join(5)
    writer.close(timeout=10)
    assert gated.count() == 4, f"all 4 records should be written, found {gated.count()}"
    gated.close()
