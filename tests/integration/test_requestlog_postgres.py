"""The request log on the machine's PostgreSQL: same contract as SQLite, in a schema of its own per test."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flywheel.requestlog import BatchWriter, FeedbackItem, LoggedRequest, RequestLog
from flywheel.schemas import Feedback
from flywheel.settings import RequestLogParams
from tests.helpers.postgres import PG_URL, postgres_engine
from tests.helpers.request_records import T0, make_record, read_all

pytestmark = [pytest.mark.integration, pytest.mark.services]


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped with everything in it after the test."""
    engine = postgres_engine()
    name = f"requestlog_test_{uuid.uuid4().hex[:12]}"
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture
def log(schema: str) -> Iterator[RequestLog]:
    store = RequestLog(PG_URL, schema=schema)
    yield store
    store.close()


def test_records_round_trip_in_order_with_duplicates_ignored(log: RequestLog) -> None:
    # given records appended twice over, in two transactions
    records = [make_record(i) for i in range(20)]
    first = log.append(records[:12])
    second = log.append(records[8:])
    # when read back by watermark pages
    rows = read_all(log, page=6)
    # then each record is there once, exactly as written, in order
    assert (first, second) == (12, 8), f"inserted counts should skip known ids, got {(first, second)}"
    assert [row.record for row in rows] == records, "records should round-trip exactly, once each, in order"
    assert log.count() == 20, f"count should be 20, got {log.count()}"


def test_awkward_text_and_repeated_ids_in_one_batch_are_stored_once(log: RequestLog) -> None:
    # given a batch with NUL characters (Postgres text rejects them) and one id twice
    record = make_record(1, application="sup\x00port", response="a\x00b")
    # when appended
    inserted = log.append([record, make_record(2), record])
    # then each id is stored once and the record round-trips exactly
    assert inserted == 2, f"a repeated id in one batch should insert once, got {inserted}"
    assert [row.record for row in read_all(log)] == [record, make_record(2)], "records should be exact"


def test_feedback_is_joined_latest_wins(log: RequestLog) -> None:
    # given feedback before and after the record, out of time order
    log.add_feedback([FeedbackItem("req-000001", -1, "late", T0.replace(hour=9))])
    log.append([make_record(1)])
    log.add_feedback([FeedbackItem("req-000001", 1, "early", T0)])
    # when read
    fetched = log.get("req-000001")
    # then the latest by time wins
    assert fetched is not None and fetched.record.feedback == Feedback(score=-1, comment="late"), (
        "the feedback with the latest `at` should be joined"
    )


def test_schema_can_come_from_the_url(schema: str) -> None:
    # given a log opened with ?schema= in its URL
    store = RequestLog(f"{PG_URL}?schema={schema}")
    store.append([make_record(1)])
    # then the table lives in that schema
    engine = sa.create_engine(PG_URL)
    with engine.connect() as conn:
        n = conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".requests')).scalar_one()
    engine.dispose()
    store.close()
    assert n == 1, f"the row should be in schema {schema}, found {n}"


def test_batch_writer_makes_every_record_durable(log: RequestLog) -> None:
    writer = BatchWriter(log, RequestLogParams(batch_size=100, flush_seconds=0.05))
    records = [make_record(i) for i in range(1000)]
    for record in records:
        writer.submit(record)
    writer.close(timeout=60)
    assert [row.record for row in read_all(log)] == records, "every submitted record should be logged"
    assert writer.stats["written"] == 1000, f"counters off: {writer.stats}"


def test_concurrent_writer_processes_never_make_a_reader_skip_a_row(schema: str) -> None:
    # given three independent stores (as two gateway processes would hold) writing at once
    writers = [RequestLog(PG_URL, schema=schema) for _ in range(3)]
    reader = RequestLog(PG_URL, schema=schema)
    per_writer, batch = 1000, 20

    def write(w: int) -> None:
        for start in range(0, per_writer, batch):
            ids = range(w * per_writer + start, w * per_writer + start + batch)
            writers[w].append([make_record(i) for i in ids])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    # when a harvester pages by watermark while they write
    harvested: list[LoggedRequest] = []
    watermark = 0
    while True:
        writing = any(thread.is_alive() for thread in threads)
        page = reader.read_since(watermark, 50)
        harvested.extend(page)
        if page:
            watermark = page[-1].seq
        elif not writing:
            break
    for thread in threads:
        thread.join()
    # then it saw every row exactly once: seq commits in order across writers
    ids = [row.record.request_id for row in harvested]
    assert len(ids) == 3 * per_writer, f"the harvest should see all {3 * per_writer} rows, saw {len(ids)}"
    assert len(set(ids)) == len(ids), "the harvest should see no row twice"
    for store in (*writers, reader):
        store.close()
