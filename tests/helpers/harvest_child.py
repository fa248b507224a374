"""One harvest run in a process of its own, for the crash tests: they SIGKILL it mid-run.

    FLYWHEEL_TEST_CRASH_AT=after_partition python -m tests.helpers.harvest_child KIND URL RAW STATE

Runs `run_harvest` over `make_source(KIND, URL)` as the flow's task does and
prints the run's counts as JSON. With `FLYWHEEL_TEST_CRASH_AT` naming a
`crash_point`, the process kills itself there with SIGKILL (no cleanup, no flush).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import orjson

HARVEST_PACKAGE = Path(__file__).resolve().parents[2] / "tasks" / "harvest"


def _load_harvest() -> types.SimpleNamespace:
    """`run_harvest` and `make_source`, loaded without `tasks/harvest/__init__.py`.

    That file re-exports the Prefect tasks, and importing Prefect costs ~1.3 s a
    process; the crash tests start a couple of dozen children, and the modules
    that do the work import nothing of Prefect. The code that runs is the same.
    """
    package = types.ModuleType("tasks.harvest")
    package.__path__ = [str(HARVEST_PACKAGE)]
    sys.modules.setdefault("tasks.harvest", package)
    harvest = importlib.import_module("tasks.harvest.harvest")
    sources = importlib.import_module("tasks.harvest.sources")
    return types.SimpleNamespace(run_harvest=harvest.run_harvest, make_source=sources.make_source)


def main(argv: list[str] | None = None) -> None:
    """Harvest once and print `{run_id, n_read, n_valid, n_quarantined}`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind")
    parser.add_argument("url")
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--max-malformed-share", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    harvest = _load_harvest()
    result = harvest.run_harvest(
        harvest.make_source(args.kind, args.url),
        args.raw_dir,
        args.state_dir,
        max_malformed_share=args.max_malformed_share,
        limit=args.limit,
    )
    counts = {key: getattr(result, key) for key in ("run_id", "n_read", "n_valid", "n_quarantined")}
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")


if __name__ == "__main__":
    main()
