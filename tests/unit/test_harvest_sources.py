"""Harvest sources: files at fsspec URLs (JSONL and Parquet), a SQL table, and their row mapping."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from flywheel.schemas import RequestRecord
from tasks.harvest import (
    FilesSource,
    HarvestResult,
    MissingFilesystem,
    SqlTableSource,
    UnreadableFile,
    make_source,
    run_harvest,
    source_url,
)
from tasks.harvest.sources import Source, chat_row_to_record
from tests.helpers.raw_partitions import harvested_ids, harvested_records, quarantined
from tests.helpers.request_records import T0, make_record


def harvest(source: Source, tmp_path: Path, limit: int | None = None, share: float = 0.9) -> HarvestResult:
    """Harvest into tmp_path/raw with state in tmp_path/state (a lenient malformed threshold)."""
    return run_harvest(source, tmp_path / "raw", tmp_path / "state", max_malformed_share=share, limit=limit)


def write_jsonl(path: Path, ids: range) -> None:
    path.write_bytes(b"".join(make_record(i).model_dump_json().encode() + b"\n" for i in ids))


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int | None = None) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def chat_rows(ids: range) -> list[dict[str, Any]]:
    """Rows in the OpenAI fine-tuning layout: an id and messages ending with the answer."""
    return [
        {
            "request_id": f"chat-{i:04d}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"answer {i}."},
            ],
        }
        for i in ids
    ]


def req_ids(numbers: range) -> list[str]:
    """The ids `make_record` gives."""
    return [f"req-{i:06d}" for i in numbers]


def chat_ids(numbers: range) -> list[str]:
    """The ids `chat_rows` (and the SQL helper) give."""
    return [f"chat-{i:04d}" for i in numbers]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


# -- files at fsspec URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["path", "file-url", "glob", "one-file"],
)
def test_files_source_reads_local_paths_and_file_urls(form: str, inbox: Path, tmp_path: Path) -> None:
    # given a JSONL file and a Parquet file in a folder
    write_jsonl(inbox / "a.jsonl", range(3))
    write_parquet(inbox / "b.parquet", chat_rows(range(2)))
    url = {
        "path": str(inbox),
        "file-url": inbox.as_uri(),
        "glob": f"{inbox}/*",
        "one-file": str(inbox / "b.parquet"),
    }[form]
    # when harvested through that form of URL
    result = harvest(FilesSource(url), tmp_path)
    # then every record of the matched files is harvested once
    expected = chat_ids(range(2)) if form == "one-file" else req_ids(range(3)) + chat_ids(range(2))
    assert sorted(harvested_ids(tmp_path / "raw")) == sorted(expected), f"{form}: {result}"
    assert result.n_quarantined == 0, f"{form}: quarantined {result.reasons}"


def test_files_source_names_the_missing_filesystem_package() -> None:
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here, so s3:// URLs do not fail")
    # given an s3:// URL and no s3fs, when read, then the error says which package to install
    with pytest.raises(MissingFilesystem, match=r"s3://.*s3fs"):
        FilesSource("s3://bucket/incoming").read({}, None)


def test_files_source_rejects_an_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="Protocol not known: nosuch"):
        FilesSource("nosuch://bucket/incoming").read({}, None)


def test_files_glob_matching_unreadable_suffixes_fails_clearly(inbox: Path) -> None:
    # given a glob that matches a CSV next to the JSONL
    write_jsonl(inbox / "a.jsonl", range(1))
    (inbox / "b.csv").write_text("request_id\nx\n")
    # when read, then it fails naming the file instead of silently skipping it
    with pytest.raises(UnreadableFile, match=r"b\.csv"):
        FilesSource(f"{inbox}/*").read({}, None)


def test_files_folder_ignores_other_suffixes(inbox: Path, tmp_path: Path) -> None:
    # given a folder with a README beside the data
    write_jsonl(inbox / "a.jsonl", range(2))
    (inbox / "README.md").write_text("exports land here\n")
    # when harvested, then only the data files are read
    result = harvest(FilesSource(str(inbox)), tmp_path)
    assert result.n_read == 2, f"read {result.n_read}, expected the 2 JSONL lines"


# -- Parquet -----------------------------------------------------------------------------------------


def test_parquet_with_full_request_record_columns_round_trips(inbox: Path, tmp_path: Path) -> None:
    # given Parquet rows with every RequestRecord column (as pandas or the request log would export)
    records = [
        make_record(i, feedback={"score": 1, "comment": "great"} if i == 2 else None) for i in range(4)
    ]
    write_parquet(inbox / "export.parquet", [record.model_dump() for record in records])
    # when harvested
    harvest(FilesSource(str(inbox)), tmp_path)
    # then each harvested record equals the one exported
    got = [RequestRecord.model_validate(row) for row in harvested_records(tmp_path / "raw")]
    assert got == records, "full-column Parquet rows should round-trip exactly"


def test_parquet_chat_rows_map_onto_records(inbox: Path, tmp_path: Path) -> None:
    # given rows with only messages (the last from the assistant) and a bare feedback score
    rows = [
        {
            "messages": [
                {"role": "user", "content": "How do I reset my password?", "name": None},
                {"role": "assistant", "content": "Use the link on the login page.", "name": None},
            ],
            "feedback": 1,
            "source": "zendesk",
        }
    ]
    write_parquet(inbox / "chats.parquet", rows)
    # when harvested twice from scratch (two state dirs)
    harvest(FilesSource(str(inbox)), tmp_path)
    again = FilesSource(str(inbox)).read({}, None)
    # then the final answer is the response, the rest the request, defaults fill the gateway fields
    [record] = harvested_records(tmp_path / "raw")
    expected = {
        "messages": [{"role": "user", "content": "How do I reset my password?"}],
        "response": "Use the link on the login page.",
        "feedback": {"score": 1, "comment": None},
        "application": "imported",
        "model_name": "unknown",
        "prompt_tokens": 0,
    }
    assert {key: record[key] for key in expected} == expected, f"mapped record {record}"
    assert record["request_id"].startswith("row-"), f"a derived id, got {record['request_id']}"
    assert orjson.loads(again.lines[0].data)["request_id"] == record["request_id"], "the id is stable"


def test_chat_row_mapping_keeps_an_explicit_response_and_the_assistant_turn() -> None:
    # given a row with a response column and messages that end with the assistant
    row = {"messages": chat_rows(range(1))[0]["messages"], "response": "new answer"}
    # when mapped, then the messages are kept whole and the response column wins
    fields = chat_row_to_record(row, "id-1", T0)
    assert len(fields["messages"]) == 3, "an explicit response leaves the messages as they are"
    assert fields["response"] == "new answer", f"response {fields['response']}"


BAD_PARQUET_ROWS: list[tuple[str | None, int | None, str]] = [
    (None, None, "missing_field"),  # no messages at all
    ("[{oops", None, "wrong_type"),  # messages text that is not JSON
    ('"hello"', None, "wrong_type"),  # JSON, but not a list
    ("[]", None, "invalid_record"),  # an empty conversation
    ('[{"role": "robot", "content": "beep"}]', None, "invalid_record"),  # not an OpenAI role
    ('[{"role": "user", "content": "q", "tool_calls": [1]}]', None, "invalid_record"),  # extra key
    ('[{"role": "user", "content": "q"}]', 5, "invalid_record"),  # a score outside -1, 0, 1
]


@pytest.mark.parametrize(
    ("messages", "feedback", "reason"),
    BAD_PARQUET_ROWS,
    ids=[f"{r}-{i}" for i, (*_, r) in enumerate(BAD_PARQUET_ROWS)],
)
def test_parquet_rows_that_do_not_map_are_quarantined_with_a_reason(
    messages: str | None, feedback: int | None, reason: str, inbox: Path, tmp_path: Path
) -> None:
    # given a Parquet file with messages as JSON text: two valid rows around one bad one
    good = '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'
    rows: list[dict[str, Any]] = [
        {"request_id": "ok-1", "messages": good, "feedback": None},
        {"request_id": "bad", "messages": messages, "feedback": feedback},
        {"request_id": "ok-2", "messages": good, "feedback": -1},
    ]
    write_parquet(inbox / "rows.parquet", rows)
    # when harvested
    result = harvest(FilesSource(str(inbox)), tmp_path)
    # then the valid rows are harvested and the bad one is quarantined, with its reason and row
    assert sorted(harvested_ids(tmp_path / "raw")) == ["ok-1", "ok-2"], f"harvested {result}"
    [entry] = quarantined(tmp_path / "raw")
    assert entry["reason"] == reason, f"got {entry['reason']} ({entry['detail']}), want {reason}"
    assert str(entry["position"]).endswith("rows.parquet:row=1"), f"position {entry['position']}"


def test_parquet_rewritten_with_more_rows_yields_only_the_new_ones(inbox: Path, tmp_path: Path) -> None:
    # given a harvested Parquet file in row groups of 2
    path = inbox / "chats.parquet"
    write_parquet(path, chat_rows(range(5)), row_group_size=2)
    first = harvest(FilesSource(str(inbox)), tmp_path)
    # when the exporter rewrites it with 3 rows more, and a second file lands
    write_parquet(path, chat_rows(range(8)), row_group_size=2)
    write_parquet(inbox / "later.parquet", chat_rows(range(100, 102)))
    second = harvest(FilesSource(str(inbox)), tmp_path)
    # then the second run read only the new rows, each row once in all
    assert (first.n_valid, second.n_valid) == (5, 5), f"runs read {first.n_valid}, {second.n_valid}"
    assert sorted(harvested_ids(tmp_path / "raw")) == chat_ids(range(8)) + chat_ids(range(100, 102))
    assert second.end_watermark["offsets"][path.as_uri()] == 8, f"row offset {second.end_watermark}"


def test_parquet_limit_pages_across_row_groups(inbox: Path, tmp_path: Path) -> None:
    # given 7 rows in row groups of 2, and a JSONL file after it, with a limit of 3 per run
    write_parquet(inbox / "a.parquet", chat_rows(range(7)), row_group_size=2)
    write_jsonl(inbox / "b.jsonl", range(2))
    # when harvested until a run reads nothing
    counts = []
    while (n := harvest(FilesSource(str(inbox)), tmp_path, limit=3).n_read) > 0:
        counts.append(n)
    # then runs read 3, 3, 3 (the last crossing into the JSONL file) and each record lands once
    assert counts == [3, 3, 3], f"runs read {counts}"
    got = sorted(harvested_ids(tmp_path / "raw"))
    assert got == sorted(chat_ids(range(7)) + req_ids(range(2))), f"harvested {got}"


def test_half_written_parquet_fails_the_run_and_is_read_once_complete(inbox: Path, tmp_path: Path) -> None:
    # given a JSONL file and a Parquet file whose writer has not finished
    write_jsonl(inbox / "a.jsonl", range(2))
    done = tmp_path / "done.parquet"
    write_parquet(done, chat_rows(range(3)))
    (inbox / "b.parquet").write_bytes(done.read_bytes()[:100])
    # when harvested, then the run fails naming the file, and nothing is committed
    with pytest.raises(UnreadableFile, match=r"b\.parquet is not a readable Parquet file"):
        harvest(FilesSource(str(inbox)), tmp_path)
    assert not (tmp_path / "state").exists(), "no watermark committed by the failed run"
    # and once the file is complete, a re-run harvests everything once
    (inbox / "b.parquet").write_bytes(done.read_bytes())
    harvest(FilesSource(str(inbox)), tmp_path)
    got = sorted(harvested_ids(tmp_path / "raw"))
    assert got == sorted(req_ids(range(2)) + chat_ids(range(3))), f"harvested {got}"


# -- a SQL table -------------------------------------------------------------------------------------


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chats.db'}"


def make_chats_table(url: str) -> sa.Engine:
    """A `chats` table as an app might keep one: messages and feedback as JSON text."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE chats (id INTEGER PRIMARY KEY, created_at DATETIME NOT NULL, "
                "request_id TEXT NOT NULL, messages TEXT, response TEXT, feedback TEXT, model_name TEXT)"
            )
        )
    return engine


def insert_chats(
    engine: sa.Engine, numbers: range, created_at: str = "2026-01-02 03:04:05", **row: Any
) -> None:
    values = [
        {
            "created_at": created_at,
            "request_id": f"chat-{i:04d}",
            "messages": orjson.dumps([{"role": "user", "content": f"question {i}?"}]).decode(),
            "response": f"answer {i}.",
            "feedback": '{"score": 1}' if i % 2 else None,
            "model_name": "smollm2",
        }
        | row
        for i in numbers
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO chats (created_at, request_id, messages, response, feedback, model_name) "
                "VALUES (:created_at, :request_id, :messages, :response, :feedback, :model_name)"
            ),
            values,
        )


@pytest.mark.parametrize(
    ("url", "table", "key", "schema"),
    [
        ("sqlite:///x.db?table=chats", "chats", ("id",), None),
        ("sqlite:///x.db?table=chats&key=created_at,request_id", "chats", ("created_at", "request_id"), None),
        (
            "postgresql+psycopg2://u:pw@db/app?table=chats&schema=app&key=seq&sslmode=require",
            "chats",
            ("seq",),
            "app",
        ),
    ],
)
def test_sql_source_from_url_takes_its_own_query_parameters(
    url: str, table: str, key: tuple[str, ...], schema: str | None
) -> None:
    source = SqlTableSource.from_url(url)
    assert (source.table, source.key, source.schema) == (table, key, schema), f"parsed {source}"
    assert "table=" not in source.url and "key=" not in source.url, f"driver URL {source.url}"
    assert "pw" not in source.source_id, f"the source id shows a password: {source.source_id}"
    if "sslmode" in url:
        assert "sslmode=require" in source.url, "other parameters pass through to the driver"


def test_sql_source_needs_a_table() -> None:
    with pytest.raises(ValueError, match=r"names no table: add \?table=NAME"):
        make_source("sql", "sqlite:///x.db")
    with pytest.raises(ValueError, match="needs a url"):
        source_url("sql", None, "sqlite:///requests.db", Path("incoming"))


def test_sql_reads_new_rows_by_id(tmp_path: Path) -> None:
    # given a table of 3 chats, harvested
    url = sqlite_url(tmp_path)
    engine = make_chats_table(url)
    insert_chats(engine, range(3))
    source = make_source("sql", f"{url}?table=chats")
    first = harvest(source, tmp_path)
    # when 2 more are inserted and it is harvested again
    insert_chats(engine, range(3, 5))
    second = harvest(source, tmp_path)
    third = harvest(source, tmp_path)
    engine.dispose()
    # then each run got only the new rows, mapped onto records, and the watermark is the last id
    assert (first.n_valid, second.n_valid, third.n_read) == (3, 2, 0), f"{first}, {second}, {third}"
    assert second.end_watermark == {"key": [5]}, f"watermark {second.end_watermark}"
    records = harvested_records(tmp_path / "raw")
    assert sorted(r["request_id"] for r in records) == chat_ids(range(5)), "each row once"
    one = next(r for r in records if r["request_id"] == "chat-0001")
    assert (one["messages"], one["response"], one["feedback"], one["model_name"]) == (
        [{"role": "user", "content": "question 1?"}],
        "answer 1.",
        {"score": 1, "comment": None},
        "smollm2",
    ), f"mapped row {one}"


def test_sql_composite_key_pages_through_tied_timestamps(tmp_path: Path) -> None:
    # given 5 chats with the same timestamp (text as another writer formats it) and 2 later ones
    url = sqlite_url(tmp_path)
    engine = make_chats_table(url)
    insert_chats(engine, range(5), created_at="2026-01-02 03:04:05")
    insert_chats(engine, range(5, 7), created_at="2026-01-02 03:04:06")
    source = make_source("sql", f"{url}?table=chats&key=created_at,request_id")
    # when harvested 2 rows per run, with one more row arriving midway
    counts = []
    while (n := harvest(source, tmp_path, limit=2).n_read) > 0:
        counts.append(n)
        if len(counts) == 2:
            insert_chats(engine, range(7, 8), created_at="2026-01-02 03:04:07")
    engine.dispose()
    # then no tied row is skipped or repeated
    assert counts == [2, 2, 2, 2], f"runs read {counts}"
    assert sorted(harvested_ids(tmp_path / "raw")) == chat_ids(range(8)), "each row once"


def test_sql_table_written_by_sqlalchemy_with_datetime_key(tmp_path: Path) -> None:
    # given a table SQLAlchemy wrote, keyed by a DateTime column
    url = sqlite_url(tmp_path)
    engine = sa.create_engine(url)
    table = sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("timestamp", sa.DateTime, primary_key=True),
        sa.Column("messages", sa.Text, nullable=False),
    )
    table.create(engine)
    rows = [make_record(i) for i in range(4)]

    def insert(records: list[RequestRecord]) -> None:
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {"timestamp": r.timestamp, "messages": orjson.dumps([m.model_dump() for m in r.messages])}
                    for r in records
                ],
            )

    insert(rows[:2])
    source = make_source("sql", f"{url}?table=events&key=timestamp")
    harvest(source, tmp_path)
    insert(rows[2:])
    second = harvest(source, tmp_path)
    engine.dispose()
    # then the second run reads the 2 later rows, and the timestamp column is the record's
    assert second.n_valid == 2, f"second run {second}"
    stamps = sorted(r["timestamp"] for r in harvested_records(tmp_path / "raw"))
    assert len(stamps) == 4 and stamps[0].startswith("2026-01-02T03:04:05"), f"timestamps {stamps}"


def test_sql_rows_that_do_not_map_are_quarantined(tmp_path: Path) -> None:
    # given valid chats and rows with broken messages
    url = sqlite_url(tmp_path)
    engine = make_chats_table(url)
    insert_chats(engine, range(3))
    insert_chats(engine, range(3, 4), messages="[{oops")
    insert_chats(engine, range(4, 5), messages=None)
    insert_chats(engine, range(5, 6), feedback='{"score": "great"}')
    engine.dispose()
    # when harvested
    result = harvest(make_source("sql", f"{url}?table=chats"), tmp_path)
    # then the valid rows are kept and each broken one is quarantined with its reason and key
    assert sorted(harvested_ids(tmp_path / "raw")) == chat_ids(range(3)), f"{result}"
    entries = quarantined(tmp_path / "raw")
    got = [(e["reason"], e["position"]) for e in entries]
    assert got == [("wrong_type", "chats:4"), ("missing_field", "chats:5"), ("invalid_record", "chats:6")], (
        f"quarantine {got}"
    )


def test_sql_unknown_key_column_fails_clearly(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    make_chats_table(url).dispose()
    with pytest.raises(ValueError, match=r"no key column\(s\) \['seq'\]"):
        make_source("sql", f"{url}?table=chats&key=seq").read({}, None)


def test_make_source_knows_every_kind(tmp_path: Path) -> None:
    assert isinstance(make_source("files", str(tmp_path)), FilesSource), "files"
    assert isinstance(make_source("sql", "sqlite:///x.db?table=t"), SqlTableSource), "sql"
