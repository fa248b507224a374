"""The monitoring frame: one row per logged request in a time window, read straight from the request log.

Every drift signal is a plain function over this frame, so tests build it in
memory (`monitor_frame`) and the flow reads it from the log (`load_window`):

| column | type | what it holds |
|---|---|---|
| request_id | str | the gateway's id |
| ts | datetime64[ns] | when the request arrived (naive UTC, as the log stores it) |
| application, arm, model_name | category | what was asked and who answered |
| model_version, prompt_version | category | the served versions ("" when the record had none) |
| status | category | "ok" or "error" |
| cache_hit | bool | answered from the gateway's cache |
| prompt_tokens, completion_tokens | int64 | token counts the gateway measured |
| ttft_ms | float64 | time to first token (NaN when not streamed) |
| latency_ms, cost_usd | float64 | end-to-end latency and price of the request |
| feedback | float64 | the latest user score -1/0/1, NaN when unrated |
| message | category | the last user message (categories = the distinct messages) |

`message` is categorical so a million-row window holds each distinct text once
and the embedding step gets the distinct texts for free.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from flywheel.settings import DriftParams

COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts",
    "application",
    "arm",
    "model_name",
    "model_version",
    "prompt_version",
    "status",
    "cache_hit",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "cost_usd",
    "feedback",
    "message",
)
CATEGORY_COLUMNS: tuple[str, ...] = (
    "application",
    "arm",
    "model_name",
    "model_version",
    "prompt_version",
    "status",
    "message",
)
_INT_COLUMNS = ("prompt_tokens", "completion_tokens")
_FLOAT_COLUMNS = ("ttft_ms", "latency_ms", "cost_usd", "feedback")
# The store's columns this module reads (flywheel/requestlog/store.py owns the schema).
_SELECTED = (
    "request_id",
    "application",
    "arm",
    "model_name",
    "model_version",
    "prompt_version",
    "status",
    "cache_hit",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "cost_usd",
)
_CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class Windows:
    """The current window [current_start, end) and the baseline [baseline_start, current_start)."""

    baseline_start: datetime
    current_start: datetime
    end: datetime


def drift_windows(end: datetime, params: DriftParams) -> Windows:
    """The current and baseline windows ending at `end` (naive is taken as UTC), from params."""
    end = _utc_naive(end)
    current_start = end - timedelta(hours=params.current_hours)
    return Windows(current_start - timedelta(days=params.baseline_days), current_start, end)


def _utc_naive(moment: datetime) -> datetime:
    # The request log's convention: naive UTC timestamps (naive input is taken as UTC).
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _tables(schema: str | None) -> tuple[sa.TableClause, sa.TableClause]:
    """Lightweight views of the log's tables: only the columns read here, typed for binding."""
    requests = sa.table(
        "requests",
        sa.column("request_id", sa.String()),
        sa.column("ts", sa.DateTime()),
        sa.column("application", sa.String()),
        sa.column("arm", sa.String()),
        sa.column("model_name", sa.String()),
        sa.column("model_version", sa.String()),
        sa.column("prompt_version", sa.String()),
        sa.column("status", sa.String()),
        sa.column("cache_hit", sa.Boolean()),
        sa.column("prompt_tokens", sa.BigInteger()),
        sa.column("completion_tokens", sa.BigInteger()),
        sa.column("ttft_ms", sa.Float()),
        sa.column("latency_ms", sa.Float()),
        sa.column("cost_usd", sa.Float()),
        sa.column("record", sa.Text()),
        schema=schema,
    )
    feedback = sa.table(
        "feedback",
        sa.column("seq", sa.BigInteger()),
        sa.column("request_id", sa.String()),
        sa.column("score", sa.SmallInteger()),
        sa.column("at", sa.DateTime()),
        schema=schema,
    )
    return requests, feedback


def _engine(source: str | Engine, schema: str | None) -> tuple[Engine, str | None, bool]:
    """The engine, the schema (from the argument or `?schema=` in the URL), and whether we own it."""
    if isinstance(source, Engine):
        return source, schema, False
    url = make_url(source)
    from_url = url.query.get("schema")
    if isinstance(from_url, tuple):
        raise ValueError(f"schema given more than once in the URL: {from_url}")
    return sa.create_engine(url.difference_update_query(["schema"])), schema or from_url, True


def last_user_message(record_json: str | bytes) -> tuple[str, float]:
    """The last user message of a stored record's JSON, and its attached feedback score (NaN if none)."""
    record = orjson.loads(record_json)
    text = ""
    for message in reversed(record.get("messages") or ()):
        if message.get("role") == "user":
            text = message.get("content") or ""
            break
    attached = record.get("feedback")
    score = float(attached["score"]) if isinstance(attached, dict) and "score" in attached else np.nan
    return text, score


def load_window(
    source: str | Engine,
    start: datetime,
    end: datetime,
    *,
    application: str | None = None,
    model_version: str | None = None,
    schema: str | None = None,
) -> pd.DataFrame:
    """The monitoring frame of the requests logged in [start, end), optionally of one application/version.

    `source` is the request log's SQLAlchemy URL (SQLite or Postgres, as
    `Environment().request_log_uri`) or an engine. One indexed range query
    streams the columns in chunks (the record JSON is parsed per chunk for the
    last user message and dropped, so memory stays near the frame's size); a
    second query fetches the window's feedback, of which the latest per
    request wins (by `at`, then arrival), over any score attached to the record.
    """
    engine, schema, owned = _engine(source, schema)
    requests, feedback = _tables(schema)
    where = [requests.c.ts >= _utc_naive(start), requests.c.ts < _utc_naive(end)]
    if application is not None:
        where.append(requests.c.application == application)
    if model_version is not None:
        where.append(requests.c.model_version == model_version)
    # ts as text: one vectorised parse below instead of SQLAlchemy's per-row datetime processing.
    columns = [
        *(requests.c[name] for name in _SELECTED),
        sa.cast(requests.c.ts, sa.String()).label("ts"),
        requests.c.record,
    ]
    query = sa.select(*columns).where(*where)
    in_window = sa.select(requests.c.request_id).where(*where)
    scores = (
        sa.select(feedback.c.request_id, feedback.c.score)
        .where(feedback.c.request_id.in_(in_window))
        .order_by(feedback.c.at, feedback.c.seq)
    )
    try:
        with _gc_paused(), engine.connect() as conn:
            parts = list(_read_chunks(conn.execution_options(yield_per=_CHUNK_ROWS).execute(query)))
            rated = conn.execute(scores).all()
    finally:
        if owned:
            engine.dispose()
    return _assemble(parts, rated)


def _read_chunks(result: sa.CursorResult[Any]) -> Iterable[pd.DataFrame]:
    names = [*_SELECTED, "ts", "record"]
    for rows in result.partitions():
        # from_records transposes in C; the JSON is parsed here and dropped, chunk by chunk.
        chunk = pd.DataFrame.from_records(rows, columns=names, coerce_float=False)
        parsed = [last_user_message(record) for record in chunk.pop("record")]
        chunk["message"] = [text for text, _ in parsed]
        chunk["feedback"] = np.fromiter((score for _, score in parsed), dtype=np.float64, count=len(parsed))
        yield chunk


def _assemble(parts: list[pd.DataFrame], rated: Sequence[Any]) -> pd.DataFrame:
    if not parts:
        return empty_frame()
    data = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    data["ts"] = pd.to_datetime(data["ts"], format="ISO8601")
    frame = monitor_frame(data)
    if rated:
        scored = pd.DataFrame(rated, columns=["request_id", "score"])
        latest = scored.drop_duplicates("request_id", keep="last")
        scores = frame["request_id"].map(latest.set_index("request_id")["score"]).astype(np.float64)
        frame["feedback"] = scores.fillna(frame["feedback"])
    return frame


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while a million short-lived strings are built: its full passes would cost seconds."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def empty_frame() -> pd.DataFrame:
    """A monitoring frame with no rows (the columns and dtypes of a real one)."""
    return monitor_frame(pd.DataFrame({name: [] for name in COLUMNS}))


def monitor_frame(data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """A monitoring frame from in-memory columns (tests, other sources): checked, typed, in column order.

    Missing `ttft_ms`/`feedback` become NaN, missing `cache_hit` False, missing
    versions and `arm` "" and "champion"; the other columns are required.

    Raises:
        ValueError: a required column is missing.
    """
    frame = pd.DataFrame(data).copy(deep=False)
    defaults: dict[str, Any] = {
        "arm": "champion",
        "model_version": "",
        "prompt_version": "",
        "cache_hit": False,
        "ttft_ms": np.nan,
        "feedback": np.nan,
    }
    for name, value in defaults.items():
        if name not in frame.columns:
            frame[name] = value
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"the monitoring frame lacks columns {missing}; it needs {list(COLUMNS)}")
    frame = frame.loc[:, list(COLUMNS)]
    for name in CATEGORY_COLUMNS:
        column = frame[name]
        if not isinstance(column.dtype, pd.CategoricalDtype):
            # None and NaN (a record without a version) become "", so grouping never drops them.
            column = column.astype(object).where(column.notna(), "").astype(str).astype("category")
        elif column.isna().any():
            if "" not in column.cat.categories:
                column = column.cat.add_categories([""])
            column = column.fillna("")
        frame[name] = column
    frame["request_id"] = frame["request_id"].astype(object)
    if not pd.api.types.is_datetime64_any_dtype(frame["ts"]):
        frame["ts"] = pd.to_datetime(frame["ts"], format="ISO8601")
    if getattr(frame["ts"].dt, "tz", None) is not None:
        frame["ts"] = frame["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
    frame["ts"] = frame["ts"].astype("datetime64[ns]")
    frame["cache_hit"] = frame["cache_hit"].fillna(False).astype(bool)
    for name in _INT_COLUMNS:
        frame[name] = frame[name].astype(np.int64)
    for name in _FLOAT_COLUMNS:
        frame[name] = frame[name].astype(np.float64)
    return frame.reset_index(drop=True)
