"""Request-log test data: realistic records and a full read of a log, shared by unit and integration tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flywheel.requestlog import LoggedRequest, RequestLog
from flywheel.schemas import ChatMessage, RequestRecord

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_record(i: int, **changes: object) -> RequestRecord:
    """A realistic record with id `req-<i>`; `changes` override fields."""
    fields: dict[str, object] = {
        "request_id": f"req-{i:06d}",
        "timestamp": T0 + timedelta(seconds=i),
        "application": "support",
        "arm": "challenger" if i % 5 == 0 else "champion",
        "model_name": "smollm2",
        "model_version": "3",
        "prompt_name": "support-system",
        "prompt_version": "2",
        "messages": [
            ChatMessage(role="system", content="You are a support assistant."),
            ChatMessage(role="user", content=f"Question number {i}?"),
        ],
        "response": f"Answer {i}.",
        "finish_reason": "stop",
        "prompt_tokens": 20 + i,
        "completion_tokens": 5,
        "ttft_ms": 12.5,
        "latency_ms": 140.25,
        "cost_usd": 0.000123,
        "user_hash": "u" * 16,
        "session_hash": "s" * 16,
        "cache_hit": i % 7 == 0,
    }
    fields.update(changes)
    return RequestRecord.model_validate(fields)


def read_all(log: RequestLog, page: int = 1000) -> list[LoggedRequest]:
    """Every logged request, paging read_since from watermark 0."""
    rows: list[LoggedRequest] = []
    watermark = 0
    while batch := log.read_since(watermark, page):
        rows.extend(batch)
        watermark = batch[-1].seq
    return rows
