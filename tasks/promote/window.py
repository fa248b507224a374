"""The canary's read of the request log: one arm's rows since a moment, with their latest feedback.

`RequestLog` offers the harvest's incremental read by sequence number; a canary
needs a time window filtered by arm and version, which the indexed columns of
the `requests` table (ts, arm, model_version, prompt_version) answer directly.
This module reads those columns only, read-only, through SQLAlchemy Core, on
the same URL the gateway writes to (SQLite in WAL mode lets it read while the
gateway writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tasks.promote.analysis import ROW_COLUMNS

Kind = Literal["model", "prompt"]


@dataclass(frozen=True)
class ArmSelector:
    """Which rows belong to an arm: the arm label, and the model or prompt version it served.

    `version` None matches any version of that arm (a champion that is still the
    base model has none).
    """

    arm: Literal["champion", "challenger"]
    kind: Kind
    version: str | None
    application: str | None = None


class WindowReader(Protocol):
    """Reads one arm's request-log rows since a moment (the canary's view of traffic)."""

    def rows(self, selector: ArmSelector, since: datetime) -> pd.DataFrame: ...


def _naive_utc(moment: datetime) -> datetime:
    # The store keeps naive UTC timestamps (see flywheel.requestlog.store._utc_naive).
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


class SqlWindowReader:
    """`WindowReader` over the request log's tables at a SQLAlchemy URL (SQLite or Postgres)."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        schema = parsed.query.get("schema")
        self._schema = schema if isinstance(schema, str) else None
        self._engine = sa.create_engine(parsed.difference_update_query(["schema"]))
        self._requests = sa.table(
            "requests",
            *(sa.column(name) for name in ROW_COLUMNS if name != "feedback_score"),
            sa.column("application"),
            schema=self._schema,
        )
        self._feedback = sa.table(
            "feedback",
            sa.column("seq"),
            sa.column("request_id"),
            sa.column("score"),
            sa.column("at"),
            schema=self._schema,
        )

    def rows(self, selector: ArmSelector, since: datetime) -> pd.DataFrame:
        """The arm's requests with `ts >= since`, each with its latest feedback score (NaN if none)."""
        requests, feedback = self._requests, self._feedback
        where = [requests.c.ts >= _naive_utc(since), requests.c.arm == selector.arm]
        if selector.version is not None:
            column = requests.c.model_version if selector.kind == "model" else requests.c.prompt_version
            where.append(column == selector.version)
        if selector.application is not None:
            where.append(requests.c.application == selector.application)
        columns = [requests.c[name] for name in ROW_COLUMNS if name != "feedback_score"]
        query = sa.select(*columns).where(*where)
        ids = sa.select(requests.c.request_id).where(*where)
        ratings = (
            sa.select(feedback.c.request_id, feedback.c.score)
            .where(feedback.c.request_id.in_(ids))
            .order_by(feedback.c.at, feedback.c.seq)  # the store's rule: latest `at` wins, then arrival
        )
        with self._engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).mappings().all(), columns=list(ROW_COLUMNS[:-1]))
            scores = pd.DataFrame(conn.execute(ratings).mappings().all(), columns=["request_id", "score"])
        latest = scores.drop_duplicates("request_id", keep="last").set_index("request_id")["score"]
        frame["feedback_score"] = frame["request_id"].map(latest).astype(float)
        return frame

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()
