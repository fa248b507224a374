"""`RequestSink` over the shared request log's `BatchWriter` (records and feedback, off the request path)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal, cast

from flywheel.requestlog import BatchWriter, FeedbackItem, RequestLog
from flywheel.schemas import RequestRecord


class RequestLogSink:
    """Hands records and feedback to a `BatchWriter`; `close` flushes it, then closes the log."""

    def __init__(self, writer: BatchWriter, log: RequestLog | None = None) -> None:
        self.writer = writer
        self.log = log  # closed after the writer when given (the writer does not own it)

    def submit(self, record: RequestRecord) -> None:
        """Queue one record (never waits, unless the writer's max_pending is reached)."""
        self.writer.submit(record)

    def submit_feedback(self, request_id: str, score: int, comment: str | None) -> None:
        """Queue one feedback item, stamped now."""
        # The app only passes -1, 0 or 1 (FeedbackRequest validated it).
        rating = cast(Literal[-1, 0, 1], score)
        self.writer.submit_feedback(FeedbackItem(request_id, rating, comment, datetime.now(UTC)))

    def stats(self) -> Mapping[str, object]:
        """The writer's counters and last error, for /healthz."""
        return {
            "kind": "requestlog",
            **self.writer.stats,
            "last_error_message": self.writer.last_error_message,
        }

    def close(self) -> None:
        """Flush and stop the writer, then close the log."""
        self.writer.close(timeout=30)
        if self.log is not None:
            self.log.close()
