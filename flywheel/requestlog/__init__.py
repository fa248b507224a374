"""The durable request log: the gateway writes through it, the harvest stage reads through it.

`RequestLog` is the store (SQLite in WAL mode by default, Postgres by URL);
`BatchWriter` takes records off the request path and writes them in batches;
`RequestLog.read_since(watermark, limit)` is the harvest's incremental read.
See docs/request-log.md for the schema and the durability guarantees.
"""

from flywheel.requestlog.store import FeedbackItem, LoggedRequest, RequestLog, open_request_log
from flywheel.requestlog.writer import BatchWriter, WriterClosedError

__all__ = [
    "BatchWriter",
    "FeedbackItem",
    "LoggedRequest",
    "RequestLog",
    "WriterClosedError",
    "open_request_log",
]
