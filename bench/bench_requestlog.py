"""Benchmark: the request log's durable write rate and read_since paging rate.

    python bench/bench_requestlog.py [--records 100000] [--url URL ...] [--batch-size 256]
                                     [--flush-seconds 0.2] [--page 1000] [--json]

Default targets: SQLite (WAL) in a temporary folder, and the machine's Postgres
(postgresql+psycopg2://postgres@127.0.0.1:5432/test, in a throwaway schema) if
it answers. Each run submits every record through a BatchWriter and closes it
(so the figure is records made durable per second, fsyncs included), checks the
log holds exactly N records (none dropped), then pages through them with
read_since. Target: at least 5,000 durable records/s. Prints figures; asserts nothing
beyond the count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel.requestlog import BatchWriter, RequestLog  # noqa: E402  # after the sys.path line above
from flywheel.schemas import ChatMessage, RequestRecord  # noqa: E402
from flywheel.settings import RequestLogParams  # noqa: E402

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
TARGET_PER_SECOND = 5000
SYSTEM = "You are the support assistant for Acme Cloud. Answer briefly and cite the docs page. " * 3


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="records to write (default 100000)")
    parser.add_argument(
        "--url",
        action="append",
        default=None,
        help="SQLAlchemy URL to benchmark (repeatable); default: temp SQLite, plus Postgres if reachable",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="BatchWriter batch_size")
    parser.add_argument("--flush-seconds", type=float, default=0.2, help="BatchWriter flush_seconds")
    parser.add_argument("--page", type=int, default=1000, help="read_since page size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def _records(n: int) -> list[RequestRecord]:
    """N distinct records of realistic size (about 1 KB of JSON each)."""
    start = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    return [
        RequestRecord(
            request_id=f"bench-{run}-{i:08d}",
            timestamp=start + timedelta(milliseconds=i),
            application="support",
            arm="challenger" if i % 20 == 0 else "champion",
            model_name="smollm2",
            model_version="7",
            prompt_name="support-system",
            prompt_version="3",
            messages=[
                ChatMessage(role="system", content=SYSTEM),
                ChatMessage(role="user", content=f"How do I rotate API token number {i} without downtime?"),
            ],
            response="Create the new token, deploy it, then revoke the old one from Settings > Tokens. " * 3,
            finish_reason="stop",
            prompt_tokens=96,
            completion_tokens=60,
            ttft_ms=85.5,
            latency_ms=4200.0,
            cost_usd=0.0000108,
            user_hash=f"{i % 997:016x}",
            session_hash=f"{i % 4999:016x}",
            cache_hit=i % 10 == 0,
        )
        for i in range(n)
    ]


def _postgres_reachable() -> bool:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@contextmanager
def _opened(url: str) -> Iterator[RequestLog]:
    """A fresh log at `url`: its own schema on Postgres (dropped after); the URL as given otherwise."""
    if not url.startswith("postgresql"):
        log = RequestLog(url)
        try:
            yield log
        finally:
            log.close()
        return
    schema = f"requestlog_bench_{uuid.uuid4().hex[:12]}"
    log = RequestLog(url, schema=schema)
    try:
        yield log
    finally:
        log.close()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def _bench(url: str, records: list[RequestRecord], args: argparse.Namespace) -> dict[str, Any]:
    params = RequestLogParams(batch_size=args.batch_size, flush_seconds=args.flush_seconds)
    with _opened(url) as log:
        before = log.count()
        writer = BatchWriter(log, params)
        began = time.perf_counter()
        for record in records:
            writer.submit(record)
        submitted = time.perf_counter()
        writer.close()
        durable = time.perf_counter()
        stored = log.count() - before
        read = 0
        watermark = 0
        read_began = time.perf_counter()
        while page := log.read_since(watermark, args.page):
            read += len(page)
            watermark = page[-1].seq
        read_done = time.perf_counter()
        stats = writer.stats
    return {
        "url": url.split("@")[-1] if "@" in url else url,
        "records": len(records),
        "stored": stored,
        "dropped": len(records) - stored,
        "submit_per_s": round(len(records) / (submitted - began)),
        "durable_per_s": round(len(records) / (durable - began)),
        "read_per_s": round(read / (read_done - read_began)) if read else 0,
        "read": read,
        "batches": int(stats["batches"]),
        "errors": int(stats["errors"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on each URL and print the figures; non-zero if a record was dropped."""
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-requestlog-") as tmp:
        urls = args.url or [f"sqlite:///{Path(tmp) / 'requests.db'}"]
        if args.url is None:
            if _postgres_reachable():
                urls.append(POSTGRES_URL)
            else:
                print(f"(Postgres not reachable at {POSTGRES_URL}; SQLite only)", file=sys.stderr)
        records = _records(args.records)
        results = [_bench(url, records, args) for url in urls]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"request log: {args.records} records, batch_size={args.batch_size}, page={args.page}")
        for r in results:
            verdict = "ok" if r["durable_per_s"] >= TARGET_PER_SECOND else f"below {TARGET_PER_SECOND}/s"
            print(
                f"  {r['url']}\n"
                f"    durable write  {r['durable_per_s']:>9,} records/s  ({verdict}; {r['batches']} batches, "
                f"{r['errors']} errors)\n"
                f"    submit only    {r['submit_per_s']:>9,} records/s\n"
                f"    read_since     {r['read_per_s']:>9,} records/s  ({r['read']} read)\n"
                f"    stored {r['stored']} of {r['records']}, dropped {r['dropped']}"
            )
    return 1 if any(r["dropped"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
