"""The batch writer: takes records off the request path and appends them to the log in batches.

`submit` only enqueues. One daemon thread drains the queue into the store:
a batch is written when it holds `batch_size` items, when its oldest item has
waited `flush_seconds`, or when someone flushes or closes. A failed write is
retried with capped backoff until it succeeds, so nothing submitted is dropped;
while the store is down the queue grows to `max_pending`, then `submit` blocks.
What a crash can lose is exactly what `stats["pending"]` counts.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from flywheel.requestlog.store import FeedbackItem, RequestLog
from flywheel.schemas import RequestRecord

if TYPE_CHECKING:
    from flywheel.settings import RequestLogParams

logger = logging.getLogger(__name__)

_BACKOFF_FIRST_SECONDS = 0.05
_BACKOFF_MAX_SECONDS = 5.0

ItemT = TypeVar("ItemT", RequestRecord, FeedbackItem)


class WriterClosedError(RuntimeError):
    """An item was submitted to a BatchWriter after close()."""


class BatchWriter:
    """Writes submitted records and feedback to a RequestLog in batches, on its own thread."""

    def __init__(self, log: RequestLog, params: RequestLogParams) -> None:
        """Start the writer thread; the caller keeps owning `log` (close it after this writer)."""
        self._log = log
        self._batch_size = params.batch_size
        self._flush_seconds = params.flush_seconds
        self._max_pending = params.max_pending
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)  # the writer thread waits here
        self._has_room = threading.Condition(self._lock)  # submitters wait here when the queue is full
        self._progress = threading.Condition(self._lock)  # flush() and close() wait here
        self._queue: deque[RequestRecord | FeedbackItem] = deque()
        self._oldest_at = 0.0  # monotonic time the oldest queued item arrived
        self._enqueued = 0  # items ever submitted; position n is done once _done >= n
        self._taken = 0  # items handed to the writer thread
        self._done = 0  # items durably written (or found to be duplicates)
        self._flush_upto = 0  # write without waiting until _taken reaches this
        self._closing = False
        self._counts = {
            "submitted": 0,
            "written": 0,
            "duplicates": 0,
            "feedback_submitted": 0,
            "feedback_written": 0,
            "batches": 0,
            "errors": 0,
        }
        self._last_error_at = 0.0
        self._last_error_message: str | None = None
        self._thread = threading.Thread(target=self._run, name="requestlog-writer", daemon=True)
        self._thread.start()
        # A clean interpreter exit flushes even if the owner forgot close(); the daemon thread
        # would otherwise die with the queue still full.
        atexit.register(self._close_at_exit)

    # -- the request path ---------------------------------------------------------------------------

    def submit(self, record: RequestRecord) -> None:
        """Queue one record for writing; O(1), blocks only while max_pending items wait."""
        self._enqueue(record, "submitted")

    def submit_feedback(self, item: FeedbackItem) -> None:
        """Queue one feedback item for writing (same ordering and guarantees as submit)."""
        self._enqueue(item, "feedback_submitted")

    def _enqueue(self, item: RequestRecord | FeedbackItem, counter: str) -> None:
        with self._lock:
            while len(self._queue) >= self._max_pending and not self._closing:
                self._has_room.wait()
            if self._closing:
                raise WriterClosedError("the request log writer is closed")
            if not self._queue:
                self._oldest_at = time.monotonic()
            self._queue.append(item)
            self._enqueued += 1
            self._counts[counter] += 1
            # Wake the writer only when there is something new for it to decide on.
            if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
                self._has_work.notify()

    # -- waiting for durability ---------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything submitted before this call is durable; TimeoutError after `timeout`."""
        with self._lock:
            target = self._enqueued
            self._flush_upto = max(self._flush_upto, target)
            self._has_work.notify()
            if not self._progress.wait_for(lambda: self._done >= target, timeout):
                raise TimeoutError(
                    f"request log flush timed out after {timeout}s with {target - self._done} items "
                    f"not yet durable (last error: {self._last_error_message})"
                )

    def close(self, timeout: float | None = None) -> None:
        """Flush everything, then stop the writer thread; idempotent. Later submits raise."""
        with self._lock:
            self._closing = True
            self._has_work.notify()
            self._has_room.notify_all()  # blocked submitters raise instead of waiting forever
        atexit.unregister(self._close_at_exit)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(
                f"request log writer did not finish within {timeout}s; "
                f"{self.stats['pending']} items not yet durable (last error: {self._last_error_message})"
            )

    def _close_at_exit(self) -> None:
        try:
            self.close(timeout=30)
        except TimeoutError:
            logger.exception("request log: unwritten records at interpreter exit")

    @property
    def stats(self) -> dict[str, int | float]:
        """Counters: submitted, written, duplicates, batches, pending, errors, last_error (epoch s)."""
        with self._lock:
            return {
                **self._counts,
                "pending": self._enqueued - self._done,
                "last_error": self._last_error_at,
            }

    @property
    def last_error_message(self) -> str | None:
        """The most recent store error, for health endpoints and logs."""
        with self._lock:
            return self._last_error_message

    # -- the writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            records = [item for item in batch if isinstance(item, RequestRecord)]
            feedback = [item for item in batch if isinstance(item, FeedbackItem)]
            inserted = self._write_with_retry(self._log.append, records)
            feedback_rows = self._write_with_retry(self._log.add_feedback, feedback)
            with self._lock:
                self._done += len(batch)
                self._counts["written"] += inserted
                self._counts["duplicates"] += len(records) - inserted
                self._counts["feedback_written"] += feedback_rows
                self._counts["batches"] += 1
                self._progress.notify_all()

    def _next_batch(self) -> list[RequestRecord | FeedbackItem] | None:
        """Wait until a batch is due and take it; None once closing with nothing left."""
        with self._lock:
            while not self._queue:
                if self._closing:
                    return None
                self._has_work.wait()
            while (
                len(self._queue) < self._batch_size and not self._closing and self._flush_upto <= self._taken
            ):
                remaining = self._oldest_at + self._flush_seconds - time.monotonic()
                if remaining <= 0:
                    break
                self._has_work.wait(remaining)
            size = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            self._taken += size
            # Leftovers have waited at least as long as this batch's write: they are due at once.
            self._oldest_at = 0.0
            self._has_room.notify_all()
            return batch

    def _write_with_retry(self, write: Callable[[Sequence[ItemT]], int], items: Sequence[ItemT]) -> int:
        if not items:
            return 0
        delay = _BACKOFF_FIRST_SECONDS
        while True:
            try:
                return write(items)
            except Exception as error:  # any store failure is retried: dropping is worse
                with self._lock:
                    self._counts["errors"] += 1
                    self._last_error_at = time.time()
                    self._last_error_message = f"{type(error).__name__}: {error}"
                logger.warning(
                    "request log: writing %d items failed (%s); retrying in %.2fs",
                    len(items),
                    self._last_error_message,
                    delay,
                )
            # Idempotent on request_id, so retrying a batch whose commit did land adds no duplicates.
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_SECONDS)
