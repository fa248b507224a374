"""Sources the harvest reads incrementally: the request log, files at any fsspec URL, a SQL table.

A source turns a watermark (a JSON-able dict) into a `Batch`: the raw lines
after it and the watermark that covers them. Nothing here commits anything.

| kind         | reads                                              | watermark                          |
|--------------|----------------------------------------------------|------------------------------------|
| `requestlog` | the gateway's request log (`RequestLogSource`)     | `{"seq": n}`                       |
| `files`      | `*.jsonl` and `*.parquet` at a URL (`FilesSource`) | `{"offsets": {file url: n}}`       |
| `sql`        | a table by an increasing key (`SqlTableSource`)    | `{"key": [last key values]}`       |

JSONL lines must be whole `RequestRecord`s (the gateway's export). Parquet and
SQL rows are mapped from OpenAI chat format by `chat_row_to_record`, so a
table of just `messages` harvests too. Either way each row becomes one JSON
line that `quarantine.classify` then validates: what does not map is
quarantined with its reason, never dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import sqlalchemy as sa
from fsspec.core import url_to_fs
from sqlalchemy.engine import make_url

from flywheel.requestlog import open_request_log
from flywheel.schemas import RequestRecord

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

REQUESTLOG_PAGE = 10_000  # rows per read_since call when no limit is given
FILE_SUFFIXES = (".jsonl", ".parquet")
SOURCE_KINDS = ("requestlog", "files", "sql")


class MissingFilesystem(ImportError):
    """The URL's protocol needs an fsspec implementation that is not installed (e.g. s3fs for s3://)."""


class UnreadableFile(ValueError):
    """A matched file the source cannot read (not Parquet, half written, unknown suffix)."""


@dataclass(frozen=True)
class RawLine:
    """One line read from a source, with where it came from (`file:byte`, `file:row=n`, `seq:n`...)."""

    position: str
    data: bytes


@dataclass(frozen=True)
class Batch:
    """The lines after a watermark, and the watermark to commit once they are stored."""

    lines: list[RawLine]
    end_watermark: dict[str, Any]


class Source(Protocol):
    """Anything with a stable id that reads the lines after a watermark."""

    @property
    def source_id(self) -> str: ...

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch: ...


# -- rows in OpenAI chat format ----------------------------------------------------------------------

RECORD_FIELDS = frozenset(RequestRecord.model_fields)
JSON_TEXT_FIELDS = ("messages", "feedback")  # SQL stores these as JSON text; Parquet may too
# What a chat-format row may lack: an imported exchange has no gateway measurements, so they are 0.
ROW_DEFAULTS: dict[str, Any] = {
    "application": "imported",
    "model_name": "unknown",
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "latency_ms": 0.0,
    "cost_usd": 0.0,
}


def _message(message: Any) -> Any:
    """Drop null keys of a message: Parquet structs carry every key (`name`, `tool_calls`) in every row."""
    if isinstance(message, dict):
        return {key: value for key, value in message.items() if value is not None}
    return message


def chat_row_to_record(row: dict[str, Any], default_id: str, default_timestamp: datetime) -> dict[str, Any]:
    """Map a table row in OpenAI chat format onto `RequestRecord` fields (validated later, not here).

    - columns named like `RequestRecord` fields are taken as they are; other columns are ignored,
      and null values count as absent;
    - `messages` (required) is a list of `{role, content}`, or JSON text of one;
    - without a `response` column, a final `assistant` message is the response (the fine-tuning
      layout: the prompt, then the answer), and the messages before it are the request;
    - `feedback` is `{score, comment}`, JSON text of it, or a bare score in -1, 0, 1;
    - `request_id` defaults to `default_id` (stable per row, so a re-read row keeps its id),
      `timestamp` to `default_timestamp`, the rest to `ROW_DEFAULTS`.
    """
    # str(): SQLAlchemy's column names are a str subclass, which orjson will not take as keys
    fields = {str(name): value for name, value in row.items() if name in RECORD_FIELDS and value is not None}
    for name in JSON_TEXT_FIELDS:
        text = fields.get(name)
        if isinstance(text, str | bytes):
            # text that is not JSON stays text: validation quarantines it as wrong_type
            with contextlib.suppress(orjson.JSONDecodeError):
                fields[name] = orjson.loads(text)
    score = fields.get("feedback")
    if isinstance(score, int) and not isinstance(score, bool):
        fields["feedback"] = {"score": score}
    messages = fields.get("messages")
    if isinstance(messages, list):
        messages = [_message(message) for message in messages]
        last = messages[-1] if len(messages) > 1 else None
        answer = last.get("content") if isinstance(last, dict) and last.get("role") == "assistant" else None
        if "response" not in fields and isinstance(answer, str):
            fields["response"] = answer
            messages = messages[:-1]
        fields["messages"] = messages
    return {**ROW_DEFAULTS, "request_id": default_id, "timestamp": default_timestamp, **fields}


def _jsonable(value: Any) -> Any:
    """orjson's fallback for column types it does not know: Decimal, bytes, time deltas..."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def row_line(fields: dict[str, Any]) -> bytes:
    """One mapped row as a JSON line for `classify`."""
    try:
        return orjson.dumps(fields, default=_jsonable)
    except orjson.JSONEncodeError:
        # e.g. an integer beyond 64 bits, which orjson cannot write: the repr is not JSON,
        # so classify quarantines the row as bad_json, with the repr as its preview
        return repr(fields).encode("utf-8", errors="backslashreplace")


def row_id(*parts: object) -> str:
    """A stable request id for a row without one, from where it lives."""
    return "row-" + hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


# -- the gateway's request log -----------------------------------------------------------------------


@dataclass(frozen=True)
class RequestLogSource:
    """The gateway's request log; watermark `{"seq": last harvested seq}`."""

    url: str

    @property
    def source_id(self) -> str:
        return "requestlog:" + make_url(self.url).render_as_string(hide_password=True)

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch:
        """Requests with seq above the watermark, in seq order, as JSON lines."""
        seq = int(watermark.get("seq", 0))
        log = open_request_log(self.url)
        lines: list[RawLine] = []
        try:
            while limit is None or len(lines) < limit:
                page = REQUESTLOG_PAGE if limit is None else min(REQUESTLOG_PAGE, limit - len(lines))
                rows = log.read_since(seq, page)
                if not rows:
                    break
                for row in rows:
                    lines.append(RawLine(f"seq:{row.seq}", row.record.model_dump_json().encode()))
                seq = rows[-1].seq
        finally:
            log.close()
        return Batch(lines, {"seq": seq})


# -- files at any fsspec URL -------------------------------------------------------------------------


def _has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def open_filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and path of a URL, or a clear error when its package is missing."""
    try:
        return url_to_fs(url)
    except ImportError as error:
        protocol = url.split("://", 1)[0]
        raise MissingFilesystem(
            f"cannot harvest {url!r}: the {protocol}:// filesystem needs a package that is not "
            f"installed ({error}); install it into the environment that runs the harvest"
        ) from error


def _modified(fs: AbstractFileSystem, path: str) -> datetime:
    """A file's modification time (UTC), or now where the filesystem has none."""
    try:
        modified = fs.modified(path)
    except (NotImplementedError, OSError, KeyError):
        return datetime.now(UTC)
    return modified if modified.tzinfo else modified.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FilesSource:
    """`*.jsonl` and `*.parquet` files at any fsspec URL; watermark `{"offsets": {file url: n}}`.

    `url` is a folder (its `*.jsonl` and `*.parquet` files), a glob (every match must
    end in one of those suffixes), or one file; a local path, `file://`, or any
    protocol whose fsspec package is installed (`s3://` needs s3fs, `gs://` gcsfs:
    neither ships with Flywheel; without it the read raises `MissingFilesystem`).

    The offset `n` of a file is, for JSONL, the byte just past the last complete
    line consumed, so files that grow are read incrementally and a last line
    without its newline waits for the next run; for Parquet, the number of rows
    consumed, so a file rewritten with rows appended yields only the new ones. New
    files start at 0. Parquet rows are mapped by `chat_row_to_record`; JSONL lines
    must be whole `RequestRecord`s.
    """

    url: str

    @property
    def source_id(self) -> str:
        return "files:" + self.url

    def files(self) -> list[str]:
        """The matching files as full URLs, in sorted order."""
        fs, path = open_filesystem(self.url)
        if _has_glob(path):
            found = [name for name, info in fs.glob(path, detail=True).items() if info["type"] != "directory"]
            unknown = [name for name in found if not name.endswith(FILE_SUFFIXES)]
            if unknown:
                raise UnreadableFile(
                    f"{self.url!r} matches files harvest cannot read ({', '.join(unknown[:5])}); "
                    f"it reads {' and '.join(FILE_SUFFIXES)}"
                )
        elif fs.isfile(path):
            found = [path]
        else:
            found = [match for suffix in FILE_SUFFIXES for match in fs.glob(f"{path.rstrip('/')}/*{suffix}")]
        return sorted(fs.unstrip_protocol(name) for name in found)

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch:
        """Records after each file's offset, file by file in name order, up to `limit` in all."""
        offsets: dict[str, int] = dict(watermark.get("offsets", {}))
        lines: list[RawLine] = []
        for file_url in self.files():
            budget = None if limit is None else limit - len(lines)
            if budget == 0:
                break
            start = offsets.get(file_url, 0)
            read = _read_parquet if file_url.endswith(".parquet") else _read_jsonl
            new, offsets[file_url] = read(file_url, start, budget)
            lines += new
        return Batch(lines, {"offsets": offsets})


def _read_jsonl(file_url: str, start: int, budget: int | None) -> tuple[list[RawLine], int]:
    """Complete lines after byte `start`, at most `budget`; and the byte after the last one consumed."""
    fs, path = open_filesystem(file_url)
    with fs.open(path, "rb") as handle:
        handle.seek(start)
        data: bytes = handle.read()
    lines: list[RawLine] = []
    position = start
    for piece in data.split(b"\n")[:-1]:  # the last piece has no newline: not consumed
        if budget is not None and len(lines) >= budget:
            break
        if piece.strip():  # blank lines are not records
            lines.append(RawLine(f"{file_url}:{position}", piece))
        position += len(piece) + 1
    return lines, position


def _read_parquet(file_url: str, start: int, budget: int | None) -> tuple[list[RawLine], int]:
    """Rows from index `start`, at most `budget`, mapped to records; and the row index after the last."""
    # imported here: only harvests that meet a Parquet file pay for pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = open_filesystem(file_url)
    default_timestamp = _modified(fs, path)
    lines: list[RawLine] = []
    row = 0
    with fs.open(path, "rb") as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as error:
            raise UnreadableFile(
                f"{file_url} is not a readable Parquet file ({error}); if a writer is still "
                "writing it the next run will read it, else move it out of the harvest folder"
            ) from error
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if row + size <= start:  # consumed by an earlier run: not even read
                row += size
                continue
            for index, values in enumerate(parquet.read_row_group(group).to_pylist(), start=row):
                if index < start:
                    continue
                if budget is not None and len(lines) >= budget:
                    return lines, index
                fields = chat_row_to_record(values, row_id(file_url, index), default_timestamp)
                lines.append(RawLine(f"{file_url}:row={index}", row_line(fields)))
            row += size
    return lines, max(row, start)


# -- a SQL table -------------------------------------------------------------------------------------


def _key_to_json(value: Any) -> Any:
    """A key value, as the driver gave it, as JSON for the watermark file."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        raise ValueError("a harvest key column cannot be binary")
    return value


KEY_LABEL = "__harvest_key_{}"


@dataclass(frozen=True)
class SqlTableSource:
    """Rows of a SQL table after the last key read; watermark `{"key": [last row's key values]}`.

    Reads `WHERE (key...) > (:watermark...) ORDER BY key... LIMIT :limit` through
    SQLAlchemy, so any database it speaks to works (tested on SQLite and PostgreSQL).
    `key` is one or more columns whose values only grow as rows are added: an id,
    or `timestamp, request_id` where timestamps tie. (An id that concurrent writers
    commit out of order can make a reader skip the late one: use a key that is
    assigned in commit order, or harvest rows older than a lag.) Rows map to
    records by `chat_row_to_record`: `messages` (and `feedback`) as JSON text.
    """

    url: str
    table: str
    key: tuple[str, ...] = ("id",)
    schema: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SqlTableSource:
        """A source from one URL: `<SQLAlchemy URL>?table=T[&key=a,b][&schema=S]`.

        The three query parameters are the source's own and are removed before
        the URL reaches the database driver; others pass through to it.
        """
        parsed = make_url(url)
        options = {name: parsed.query[name] for name in ("table", "key", "schema") if name in parsed.query}
        if any(not isinstance(value, str) for value in options.values()):
            raise ValueError(f"sql source {url!r}: give table, key and schema once each")
        if "table" not in options:
            raise ValueError(
                f"sql source {url!r} names no table: add ?table=NAME (and &key=COLUMN[,COLUMN], default id)"
            )
        key = tuple(name.strip() for name in str(options.get("key", "id")).split(",") if name.strip())
        database = parsed.difference_update_query(["table", "key", "schema"])
        return cls(
            database.render_as_string(hide_password=False),
            str(options["table"]),
            key or ("id",),
            str(options["schema"]) if "schema" in options else None,
        )

    @property
    def source_id(self) -> str:
        where = make_url(self.url).render_as_string(hide_password=True)
        table = f"{self.schema}.{self.table}" if self.schema else self.table
        return f"sql:{where}#{table}?key={','.join(self.key)}"

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch:
        """Rows with a key above the watermark's, in key order, up to `limit`, as JSON lines."""
        engine = sa.create_engine(self.url)
        try:
            table = sa.Table(self.table, sa.MetaData(schema=self.schema), autoload_with=engine)
            missing = [name for name in self.key if name not in table.c]
            if missing:
                raise ValueError(f"table {self.table!r} has no key column(s) {missing}")
            # Keys compare as the database stores them, untouched by SQLAlchemy's types: SQLite
            # keeps dates as text in whatever format the writer chose and orders them as text,
            # so a watermark re-rendered as '... 00:00:00.000000' would skip rows. Text from the
            # watermark file is cast by the database itself (PostgreSQL: timestamp, numeric...).
            keys = [sa.type_coerce(table.c[name], sa.types.NullType()) for name in self.key]
            labels = [key.label(KEY_LABEL.format(i)) for i, key in enumerate(keys)]
            query = sa.select(table, *labels).order_by(*keys).limit(limit)
            last = watermark.get("key")
            if last is not None:
                after = [sa.literal(value, sa.types.NullType()) for value in last]
                query = query.where(sa.tuple_(*keys) > sa.tuple_(*after))
            with engine.connect() as connection:
                rows = [dict(row) for row in connection.execute(query).mappings()]
        finally:
            engine.dispose()
        now = datetime.now(UTC)
        lines: list[RawLine] = []
        end = last
        for row in rows:
            end = [_key_to_json(row.pop(KEY_LABEL.format(i))) for i in range(len(self.key))]
            fields = chat_row_to_record(row, row_id(self.table, end), now)
            lines.append(RawLine(f"{self.table}:{','.join(map(str, end))}", row_line(fields)))
        return Batch(lines, {"key": end} if end is not None else {})


def make_source(kind: str, url: str) -> Source:
    """The source of a kind (`requestlog`, `files` or `sql`) at `url`."""
    if kind == "requestlog":
        return RequestLogSource(url)
    if kind == "files":
        return FilesSource(url)
    if kind == "sql":
        return SqlTableSource.from_url(url)
    raise ValueError(f"unknown harvest source {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
