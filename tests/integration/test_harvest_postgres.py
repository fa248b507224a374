"""The SQL harvest source on the machine's PostgreSQL: same code as SQLite, keys compared by the server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from tasks.harvest import make_source, run_harvest
from tests.helpers.postgres import PG_URL, postgres_engine
from tests.helpers.raw_partitions import harvested_ids, harvested_records, quarantined

pytestmark = [pytest.mark.integration, pytest.mark.services]

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@pytest.fixture
def engine() -> Iterator[tuple[sa.Engine, str]]:
    """An engine and a fresh schema with a `chats` table (jsonb messages), dropped after the test."""
    engine = postgres_engine()
    schema = f"harvest_test_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}".chats (seq bigserial PRIMARY KEY, created_at timestamptz NOT NULL, '
                "request_id text NOT NULL, messages jsonb, response text, feedback jsonb)"
            )
        )
    yield engine, schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def insert(engine: sa.Engine, schema: str, numbers: range, at: datetime, messages: object = None) -> None:
    rows = [
        {
            "created_at": at,
            "request_id": f"chat-{i:04d}",
            "messages": orjson.dumps(
                messages if messages is not None else [{"role": "user", "content": f"q{i}"}]
            ).decode(),
            "response": f"a{i}",
            "feedback": orjson.dumps({"score": -1}).decode() if i % 3 == 0 else None,
        }
        for i in numbers
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{schema}".chats (created_at, request_id, messages, response, feedback) '
                "VALUES (:created_at, :request_id, CAST(:messages AS jsonb), :response, "
                "CAST(:feedback AS jsonb))"
            ),
            rows,
        )


def test_postgres_table_pages_by_timestamptz_and_id_with_ties(
    engine: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    # given 5 chats at one instant (microseconds and all), 2 a second later, and a bad one
    db, schema = engine
    insert(db, schema, range(5), T0)
    insert(db, schema, range(5, 7), T0 + timedelta(seconds=1))
    insert(db, schema, range(7, 8), T0 + timedelta(seconds=1), messages="hello")
    source = make_source("sql", f"{PG_URL}?table=chats&schema={schema}&key=created_at,request_id")
    # when harvested 3 rows per run, with 2 rows arriving midway
    counts = []
    while n := run_harvest(
        source, tmp_path / "raw", tmp_path / "state", max_malformed_share=0.5, limit=3
    ).n_read:
        counts.append(n)
        if len(counts) == 1:
            insert(db, schema, range(8, 10), T0 + timedelta(seconds=2))
    # then no tied row is skipped or repeated, jsonb maps onto records, the bad row is quarantined
    assert counts == [3, 3, 3, 1], f"runs read {counts}"
    expected = [f"chat-{i:04d}" for i in range(10) if i != 7]
    assert sorted(harvested_ids(tmp_path / "raw")) == expected, "each valid row once"
    [entry] = quarantined(tmp_path / "raw")
    assert (entry["reason"], entry["position"].split(",")[-1]) == ("wrong_type", "chat-0007"), f"{entry}"
    three = next(r for r in harvested_records(tmp_path / "raw") if r["request_id"] == "chat-0003")
    assert (three["messages"], three["feedback"]) == (
        [{"role": "user", "content": "q3"}],
        {"score": -1, "comment": None},
    ), f"mapped row {three}"
