"""Prefect tasks of the harvest flow: thin shells over `run_harvest`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.harvest.harvest import HarvestConfig, HarvestResult, run_harvest, summary_markdown
from tasks.harvest.sources import JsonlFilesSource, RequestLogSource, Source


def make_source(kind: str, url: str) -> Source:
    """The source of a kind (`requestlog` or `files`) at `url`."""
    if kind == "requestlog":
        return RequestLogSource(url)
    if kind == "files":
        return JsonlFilesSource(url)
    raise ValueError(f"unknown harvest source {kind!r}; expected 'requestlog' or 'files'")


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
