"""What the gateway needs from the outside that is not a backend: where records and feedback go.

The request log lives in the shared core (`flywheel.requestlog`); the gateway writes
through this small protocol so it never imports the log's internals, and tests (and
a `--no-log` run) use `MemorySink`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flywheel.schemas import RequestRecord


@runtime_checkable
class RequestSink(Protocol):
    """Takes one record per request and feedback joined by request id; never blocks the caller."""

    def submit(self, record: RequestRecord) -> None: ...

    def submit_feedback(self, request_id: str, score: int, comment: str | None) -> None: ...


@runtime_checkable
class SinkWithStats(Protocol):
    """A sink that can say how it is doing (pending records, last flush, errors) for /healthz."""

    def stats(self) -> Mapping[str, object]: ...


@dataclass(frozen=True)
class FeedbackEntry:
    """Feedback as `MemorySink` keeps it."""

    request_id: str
    score: int
    comment: str | None


class MemorySink:
    """Keeps the last `max_records` records and feedback in memory (tests, benchmarks, logging off)."""

    def __init__(self, max_records: int = 100_000) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=max_records)
        self.feedback: deque[FeedbackEntry] = deque(maxlen=max_records)
        self.submitted = 0

    def submit(self, record: RequestRecord) -> None:
        """Keep the record."""
        self.records.append(record)
        self.submitted += 1

    def submit_feedback(self, request_id: str, score: int, comment: str | None) -> None:
        """Keep the feedback."""
        self.feedback.append(FeedbackEntry(request_id, score, comment))

    def by_id(self, request_id: str) -> RequestRecord | None:
        """The record with this request id, if still held."""
        return next((r for r in self.records if r.request_id == request_id), None)

    def stats(self) -> Mapping[str, object]:
        """Counts, in the shape /healthz shows."""
        return {"kind": "memory", "submitted": self.submitted, "held": len(self.records)}
