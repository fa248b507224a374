"""Benchmark: the demo workload's request-log generator (records/s, output size, memory).

    python bench/bench_demo.py [--records 1000000] [--seed 42] [--json]

Generates N history records to a temporary file (deleted afterwards), the
way `write_demo` writes them, and prints the figures. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="history records to generate")
    parser.add_argument("--seed", type=int, default=42, help="demo seed")
    parser.add_argument("--application", default="support-assistant", help="application name in records")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    args = _parse_args(argv)
    from flywheel.demo.history import INVALID_KINDS, HistoryGenerator
    from flywheel.demo.workload import write_history
    from flywheel.settings import DemoParams

    params = DemoParams(seed=args.seed, n_records=args.records)
    start = time.perf_counter()
    generator = HistoryGenerator(params, args.application)
    setup_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        digest = write_history(generator, Path(tmp) / "history.jsonl")
    wall_s = time.perf_counter() - start
    figures = {
        "records": args.records,
        "wall_s": round(wall_s, 2),
        "setup_s": round(setup_s, 3),
        "records_per_s": round(args.records / wall_s),
        "output_mb": round(digest.bytes / 1e6, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "invalid_lines": sum(generator.counts[kind] for kind in INVALID_KINDS),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"records        {figures['records']:,}")
        print(f"wall           {figures['wall_s']} s (setup {figures['setup_s']} s)")
        print(f"throughput     {figures['records_per_s']:,} records/s")
        print(f"output         {figures['output_mb']} MB")
        print(f"peak RSS       {figures['peak_rss_mb']} MB")
        print(f"invalid lines  {figures['invalid_lines']:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
