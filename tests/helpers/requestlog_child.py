"""A stand-in gateway for the request-log crash tests: submits records and acknowledges each on stdout.

    python -m tests.helpers.requestlog_child URL --count N --rate R [--start S]

Prints `ready`, then one request id per line right after `BatchWriter.submit`
returns (the moment a gateway would answer its client). SIGTERM is a clean
stop: the writer is closed (flushed) and `closed` is printed. SIGKILL is the crash.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType

from flywheel.requestlog import BatchWriter, open_request_log
from flywheel.schemas import ChatMessage, RequestRecord
from flywheel.settings import RequestLogParams


def request_id(i: int) -> str:
    """The id the child gives its i-th record."""
    return f"crash-{i:08d}"


def record(i: int) -> RequestRecord:
    """A small, valid record with id `request_id(i)`."""
    return RequestRecord(
        request_id=request_id(i),
        timestamp=datetime.now(UTC),
        application="support",
        model_name="smollm2",
        messages=[ChatMessage(role="user", content=f"question {i}")],
        response=f"answer {i}",
        prompt_tokens=3,
        completion_tokens=2,
        latency_ms=10.0,
        cost_usd=0.0,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """Submit records at a steady rate until done or signalled."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="records per second")
    parser.add_argument("--flush-seconds", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    log = open_request_log(args.url)
    writer = BatchWriter(log, RequestLogParams(batch_size=args.batch_size, flush_seconds=args.flush_seconds))
    out = sys.stdout
    try:
        out.write("ready\n")
        out.flush()
        began = time.monotonic()
        for n, i in enumerate(range(args.start, args.start + args.count)):
            writer.submit(record(i))
            out.write(request_id(i) + "\n")
            out.flush()
            ahead = began + (n + 1) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    finally:
        writer.close(timeout=30)
        log.close()
        out.write("closed\n")
        out.flush()


if __name__ == "__main__":
    main()
