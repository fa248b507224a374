"""Benchmark: the drift run over N logged requests (default 1,000,000) in a SQLite request log.

    python bench/bench_drift.py [--rows 1000000] [--distinct 10000] [--seed 0] [--json]

Steps:

- build: N requests over 8 days (the last 24 h are the current window, the 7
  days before the baseline) in a SQLite log created by `open_request_log`,
  bulk-inserted with SQLAlchemy Core executemany, ~20% of them rated in the
  feedback table. Messages are drawn (Zipf-like) from `--distinct` support
  questions; the current window adds a new off-domain topic (5%, some with
  e-mail addresses) and a canary version answering 40% slower;
- first-time embedding: every distinct message of both windows through MiniLM
  into an empty on-disk EmbeddingCache, reported as messages/s (model load
  timed apart);
- the drift run, timed whole with the cache warm: `load_window` for both
  windows (SQL), `compute_drift` (embedding lookups, every signal per group,
  MMD tests, new topics with the real PII redactor), the markdown and the HTML
  report.

Target: the drift run in under 60 s on this machine, first-time embedding
excluded. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 60.0
END = datetime(2026, 12, 4, 12, 0)
SUFFIXES = (
    "",
    " Thanks!",
    " I'm on iOS.",
    " I'm on Android.",
    " On the web app.",
    " This is urgent.",
    " Asking for my team.",
    " Please answer briefly.",
    " We are on the Business plan.",
    " I'm new to Quillbox.",
    " My manager asked.",
    " Since this morning.",
    " Any workaround?",
    " Is this documented?",
    " Sorry if this is obvious.",
    " Using the desktop app on Windows.",
    " Using the Mac app.",
    " For a school project.",
    " Before we renew.",
    " Still confused after reading the docs.",
    " Happens every time.",
    " Our admin wants to know.",
    " Quick question.",
    " Asking again.",
    " Hello!",
)
NEW_TOPIC = tuple(
    f"{verb} a {what} to {city} {when}{contact}"
    for verb in ("Book me", "Can you find", "I need", "Cancel my")
    for what in ("flight", "train ticket", "hotel room")
    for city in ("Paris", "Rome", "Tokyo", "Lisbon", "Oslo", "Cairo", "Lima", "Seoul")
    for when in ("tomorrow", "next weekend")
    for contact in ("", ", my e-mail is jo.smith@example.com")
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="logged requests (default 1000000)")
    parser.add_argument(
        "--distinct", type=int, default=10_000, help="distinct support questions drawn from (default 10000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser.parse_args(argv)


def _max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _questions(distinct: int) -> list[str]:
    from flywheel.demo import FACTS

    base = [question for fact in FACTS for question in fact.paraphrases]
    return [question + suffix for suffix in SUFFIXES for question in base][:distinct]


def _rows(n: int, start: datetime, hours: float, current: bool, questions: list[str], seed: int) -> dict:
    """Column arrays of n requests in [start, start + hours)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(len(questions))
    weights = 1.0 / (ranks + 10.0)  # Zipf-like: a few questions asked a lot, a long tail
    messages = np.asarray(questions, dtype=object)[rng.choice(ranks, n, p=weights / weights.sum())]
    version = np.full(n, "3", dtype=object)
    slow = np.ones(n)
    if current:
        new = rng.random(n) < 0.05
        messages[new] = np.asarray(NEW_TOPIC, dtype=object)[rng.integers(0, len(NEW_TOPIC), int(new.sum()))]
        canary = rng.random(n) < 0.1
        version[canary] = "4"
        slow[canary] = 1.4
    error = rng.random(n) < 0.002
    prompt_tokens = rng.poisson(120, n) + 10
    completion_tokens = np.where(error, 0, rng.poisson(40, n) + 5)
    ttft = rng.lognormal(np.log(200.0), 0.3, n) * slow
    latency = ttft + completion_tokens * 20.0 * rng.lognormal(0.0, 0.2, n) * slow
    offsets = np.sort(rng.random(n)) * hours * 3600.0
    return {
        "messages": messages,
        "version": version,
        "error": error,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft": ttft,
        "latency": latency,
        "cost": (prompt_tokens * 0.05 + completion_tokens * 0.10) / 1e6,
        "ts": [start + timedelta(seconds=float(s)) for s in offsets],
        "rated": rng.random(n) < 0.2,
        "score": rng.choice([1, 1, 1, -1, 0], n),
    }


def build_log(path: Path, rows: int, distinct: int, seed: int) -> dict[str, float]:
    """Write `rows` requests (and feedback) into a SQLite request log at `path`; returns timings."""
    from flywheel.requestlog import open_request_log

    started = time.perf_counter()
    url = f"sqlite:///{path}"
    open_request_log(url).close()  # the real schema and indexes
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    requests = sa.Table("requests", metadata, autoload_with=engine)
    feedback = sa.Table("feedback", metadata, autoload_with=engine)
    questions = _questions(distinct)
    n_current = rows * 24 // (24 + 24 * 7)
    windows = [
        (rows - n_current, END - timedelta(days=8), 24 * 7.0, False),
        (n_current, END - timedelta(days=1), 24.0, True),
    ]
    generated = 0.0
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA synchronous=OFF")  # a bench fixture, not the gateway's durable writes
        for part, (n, start, hours, current) in enumerate(windows):
            mark = time.perf_counter()
            cols = _rows(n, start, hours, current, questions, seed + part)
            batch: list[dict[str, Any]] = []
            scores: list[dict[str, Any]] = []
            generated += time.perf_counter() - mark
            for i in range(n):
                request_id = f"req-{part}-{i}"
                error = bool(cols["error"][i])
                record = {
                    "request_id": request_id,
                    "timestamp": cols["ts"][i],
                    "application": "support-assistant",
                    "arm": "champion",
                    "model_name": "smollm2-135m",
                    "model_version": cols["version"][i],
                    "prompt_name": "flywheel-support-system",
                    "prompt_version": "2",
                    "messages": [
                        {"role": "system", "content": "You are the support assistant for Quillbox."},
                        {"role": "user", "content": cols["messages"][i]},
                    ],
                    "response": None if error else "An answer.",
                    "prompt_tokens": int(cols["prompt_tokens"][i]),
                    "completion_tokens": int(cols["completion_tokens"][i]),
                    "ttft_ms": float(cols["ttft"][i]),
                    "latency_ms": float(cols["latency"][i]),
                    "cost_usd": float(cols["cost"][i]),
                    "status": "error" if error else "ok",
                }
                batch.append(
                    {
                        **{k: record[k] for k in ("request_id", "application", "arm", "model_name")},
                        "ts": cols["ts"][i],
                        "model_version": record["model_version"],
                        "prompt_name": record["prompt_name"],
                        "prompt_version": record["prompt_version"],
                        "status": record["status"],
                        "cache_hit": False,
                        "prompt_tokens": record["prompt_tokens"],
                        "completion_tokens": record["completion_tokens"],
                        "ttft_ms": record["ttft_ms"],
                        "latency_ms": record["latency_ms"],
                        "cost_usd": record["cost_usd"],
                        "user_hash": None,
                        "session_hash": None,
                        "record": orjson.dumps(record).decode(),
                    }
                )
                if cols["rated"][i]:
                    at = cols["ts"][i] + timedelta(minutes=1)
                    scores.append({"request_id": request_id, "score": int(cols["score"][i]), "at": at})
                if len(batch) == 50_000:
                    conn.execute(sa.insert(requests), batch)
                    batch = []
            if batch:
                conn.execute(sa.insert(requests), batch)
            if scores:
                conn.execute(sa.insert(feedback), scores)
    engine.dispose()
    return {"build_s": time.perf_counter() - started, "generate_s": generated}


def drift_run(url: str, embed: Any) -> tuple[dict[str, float], Any]:
    """The drift run as the flow does it: load both windows, compute every signal, render both reports."""
    from flywheel.settings import DriftParams
    from tasks.drift.drift import compute_drift
    from tasks.drift.frame import drift_windows, load_window
    from tasks.drift.report import markdown_report, write_html_report

    params = DriftParams()
    seconds: dict[str, float] = {}
    cpu = time.process_time()
    started = time.perf_counter()
    windows = drift_windows(END, params)
    current = load_window(url, windows.current_start, windows.end)
    baseline = load_window(url, windows.baseline_start, windows.current_start)
    seconds["load_windows"] = time.perf_counter() - started
    result = compute_drift(current, baseline, embed, params)
    seconds["compute_drift"] = time.perf_counter() - started - sum(seconds.values())
    markdown_report(result, windows)
    with tempfile.TemporaryDirectory(prefix="bench-drift-report-") as tmp:
        write_html_report(result, current, baseline, Path(tmp) / "report.html", windows)
    seconds["reports"] = time.perf_counter() - started - sum(seconds.values())
    seconds["total"] = time.perf_counter() - started
    # CPU seconds of this process (all threads): a second view when other work shares the cores.
    seconds["cpu_total"] = time.process_time() - cpu
    return seconds, (result, len(current), len(baseline))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from flywheel.runtime.embeddings import EmbeddingCache, load_embedder
    from flywheel.settings import DriftParams, apply_offline_environ
    from tasks.drift.frame import drift_windows, load_window

    apply_offline_environ()
    figures: dict[str, Any] = {"rows": args.rows, "distinct_pool": args.distinct}
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'requests.db'}"
        print(f"building a request log of {args.rows:,} requests ...", file=sys.stderr)
        built = build_log(root / "requests.db", args.rows, args.distinct, args.seed)
        figures["build_s"] = round(built["build_s"], 1)
        print(f"built in {built['build_s']:.1f} s", file=sys.stderr)

        # First-time embedding: every distinct message of both windows, into an empty cache.
        windows = drift_windows(END, DriftParams())
        distinct = set()
        for start, end in (
            (windows.current_start, windows.end),
            (windows.baseline_start, windows.current_start),
        ):
            distinct |= set(load_window(url, start, end)["message"].cat.categories)
        texts = sorted(distinct)
        mark = time.perf_counter()
        embedder = load_embedder()
        figures["model_load_s"] = round(time.perf_counter() - mark, 2)
        cache = EmbeddingCache(
            root / "embeddings.sqlite", lambda t: embedder.encode(t, batch_size=64), "all-MiniLM-L6-v2"
        )
        print(f"first-time embedding of {len(texts):,} distinct messages ...", file=sys.stderr)
        mark = time.perf_counter()
        cache(texts)
        cold = time.perf_counter() - mark
        figures["first_time_embedding"] = {
            "messages": len(texts),
            "seconds": round(cold, 1),
            "messages_per_s": round(len(texts) / cold, 1),
        }

        print("drift run, embeddings cached ...", file=sys.stderr)
        cache.hits = cache.misses = 0
        seconds, (result, n_current, n_baseline) = drift_run(url, cache)
        figures["drift_run"] = {key: round(value, 2) for key, value in seconds.items()}
        figures["drift_run"].update(
            current=n_current,
            baseline=n_baseline,
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            status=result.status,
            alerting=sorted(f"{g.key}:{s.name}" for g, s in result.alerts()),
            new_topics=[round(topic.share, 3) for topic in result.topics],
        )
        figures["peak_rss_gb"] = round(_max_rss_gb(), 2)
        cache.close()

    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        run = figures["drift_run"]
        emb = figures["first_time_embedding"]
        print(
            f"drift run over {n_current + n_baseline:,} requests ({n_current:,} current, {n_baseline:,} "
            f"baseline): {run['total']} s wall, {run['cpu_total']} s CPU (target < {TARGET_SECONDS:.0f} s), "
            "embeddings cached "
            f"({run['cache_hits']:,} hits, {run['cache_misses']} misses)\n"
            f"  phases: load {run['load_windows']} s, compute {run['compute_drift']} s, "
            f"reports {run['reports']} s; peak RSS {figures['peak_rss_gb']} GB\n"
            f"  status {run['status']}; alerting {run['alerting']}; new-topic shares {run['new_topics']}\n"
            f"first-time embedding: {emb['messages']:,} new messages in {emb['seconds']} s = "
            f"{emb['messages_per_s']} messages/s (MiniLM on CPU; model load "
            f"{figures['model_load_s']} s, apart)\n"
            f"building the log: {figures['build_s']} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
