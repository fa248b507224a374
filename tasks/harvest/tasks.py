"""Prefect tasks of the harvest flow: thin shells over `run_harvest`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from flywheel.dvcdata import Versioned, track_data
from tasks.harvest.harvest import HarvestConfig, HarvestResult, run_harvest, summary_markdown
from tasks.harvest.sources import make_source


def source_url(kind: str, url: str | None, request_log_uri: str, incoming_dir: Path) -> str:
    """The URL to harvest: the one given, else the kind's default (a `sql` source has none)."""
    if url:
        return url
    if kind == "requestlog":
        return request_log_uri
    if kind == "files":
        return str(incoming_dir)
    raise ValueError(f"a {kind!r} harvest source needs a url (e.g. sqlite:///x.db?table=requests&key=id)")


@task(name="harvest-source")
def harvest_source(
    kind: str, url: str, raw_dir: Path, state_dir: Path, config: HarvestConfig
) -> HarvestResult:
    """Prefect task: `run_harvest` over the source (no retries: a re-run is the retry)."""
    return run_harvest(
        make_source(kind, url),
        raw_dir,
        state_dir,
        max_record_bytes=config.max_record_bytes,
        max_malformed_share=config.max_malformed_share,
        limit=config.limit,
    )


@task(name="publish-harvest-summary")
def publish_harvest_summary(result: HarvestResult) -> None:
    """Prefect task: publish the run's counts as a markdown artifact."""
    create_markdown_artifact(markdown=summary_markdown(result), key="harvest-summary")


@task(name="dvc-add-raw", retries=2, retry_delay_seconds=[2, 5])
def record_raw_with_dvc(raw_dir: Path) -> Versioned:
    """Prefect task: `dvc add` the raw partitions (and their quarantine) and push them."""
    if not raw_dir.is_dir():
        return Versioned(None, note=f"{raw_dir} does not exist yet: nothing to version")
    return track_data([raw_dir])
