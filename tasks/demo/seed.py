"""Write the demo workload: knowledge base and eval set under data/demo, history into the harvest inbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from flywheel.demo import write_demo
from flywheel.dvcdata import Versioned, commit_stage
from flywheel.settings import DemoParams, HarvestParams


def inbox_path(data_dir: Path, harvest: HarvestParams, seed: int) -> Path:
    """Where the historical logs go: the harvest stage's inbox, one file per seed."""
    return data_dir / harvest.incoming_dir / f"demo-history-seed{seed}.jsonl"


def write_workload(
    demo: DemoParams, application: str, data_dir: Path, harvest: HarvestParams
) -> dict[str, Any]:
    """Generate the workload into `data_dir/demo` and move the history into the harvest inbox.

    Returns a JSON-able summary: output paths and record counts by kind.
    """
    out_dir = data_dir / "demo"
    inbox = inbox_path(data_dir, harvest, demo.seed)
    manifest = write_demo(demo, application, out_dir, history_path=inbox)
    return {
        "demo_dir": str(out_dir),
        "history": str(inbox),
        "seed": demo.seed,
        "counts": dict(manifest.counts),
    }


@task(name="write-demo-workload")
def write_demo_workload(
    demo: DemoParams, application: str, data_dir: Path, harvest: HarvestParams
) -> dict[str, Any]:
    """Prefect task: `write_workload`."""
    return write_workload(demo, application, data_dir, harvest)


def summary_markdown(summary: dict[str, Any]) -> str:
    """A markdown table of the seeded records, for the Prefect UI."""
    rows = "\n".join(f"| {kind} | {count} |" for kind, count in summary["counts"].items())
    return (
        f"# Demo workload (seed {summary['seed']})\n\n"
        f"History (harvest inbox): `{summary['history']}`  \n"
        f"Knowledge base and eval set: `{summary['demo_dir']}`\n\n"
        f"| records | count |\n|---|---:|\n{rows}\n"
    )


@task(name="publish-seed-summary")
def publish_seed_summary(summary: dict[str, Any]) -> None:
    """Prefect task: publish the summary as a markdown artifact on the flow run."""
    create_markdown_artifact(markdown=summary_markdown(summary), key="seed-demo-summary")


@task(name="dvc-commit-seed-demo", retries=2, retry_delay_seconds=[2, 5])
def record_demo_with_dvc(data_dir: Path, record: bool) -> Versioned:
    """Prefect task: `dvc commit seed_demo` and push, unless the run overrode params."""
    if not record:
        return Versioned(None, note="ran with parameter overrides: not recorded in dvc.lock")
    return commit_stage(data_dir, "seed_demo")
