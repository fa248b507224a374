"""Prefect tasks of the curate flow: thin shells over the plain functions in `tasks.curate.run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flywheel.dvcdata import Versioned, commit_stage
from flywheel.runtime.execution import shard_count, shard_map
from flywheel.settings import CurateParams, ExecutionParams
from tasks.curate import run
from tasks.curate.curate import Curated, curate_frame
from tasks.curate.outputs import funnel_metrics, write_curated


@task(name="load-raw-partitions")
def load_raw_partitions(raw_dir: Path) -> tuple[pd.DataFrame, int]:
    """Prefect task: `run.load_raw`."""
    return run.load_raw(raw_dir)


@task(name="validate-raw")
def validate_raw(frame: pd.DataFrame, docs_dir: Path, sample_rows: int | None) -> Path:
    """Prefect task: the raw GX suite; fails the flow before any curation on a broken batch."""
    report = run.validate_raw(frame, docs_dir, sample_rows)
    create_markdown_artifact(markdown=report.markdown(), key="curate-raw-validation")
    return Path(report.data_docs)


@task(name="curate-funnel")
def run_funnel(
    raw: pd.DataFrame,
    params: CurateParams,
    paths: run.CurationPaths,
    execution: ExecutionParams,
    dask_address: str | None = None,
) -> Curated:
    """Prefect task: the funnel; its per-record steps fan out as `shard` tasks on `execution`'s runner.

    MiniLM loads once, here (embeddings cached); the steps that look across rows run here too.
    """
    embed = run.minilm_embed(paths.embedding_cache)
    protected = run.protected_questions(paths.protected)
    with shard_map(execution, dask_address) as mapper:
        return curate_frame(raw, params, embed, protected, shards=shard_count(execution), mapper=mapper)


@task(name="validate-curated")
def validate_curated(curated: Curated, params: CurateParams, docs_dir: Path) -> Path:
    """Prefect task: the curated GX suite; nothing is written when it fails."""
    report = run.validate_curated(curated, params, docs_dir)
    create_markdown_artifact(markdown=report.markdown(), key="curate-curated-validation")
    return Path(report.data_docs)


@task(name="write-curated")
def write_outputs(curated: Curated, out_dir: Path, params: CurateParams, quarantined: int) -> dict[str, Any]:
    """Prefect task: write splits, pairs, drops and funnel; returns the funnel metrics and md5s."""
    metrics = funnel_metrics(curated, quarantined)
    files = write_curated(curated, out_dir, params.format, metrics)
    return {"metrics": metrics, "files": files}


@task(name="dvc-commit-curate", retries=2, retry_delay_seconds=[2, 5])
def record_with_dvc(out_dir: Path, record: bool) -> Versioned:
    """Prefect task: `dvc commit curate` and push, unless the run used non-default params."""
    if not record:
        return Versioned(None, note="ran with parameter overrides: not recorded in dvc.lock")
    return commit_stage(out_dir, "curate")


@task(name="publish-curate-summary")
def publish_summary(markdown: str, data_docs: dict[str, Path]) -> None:
    """Prefect task: the funnel as a markdown artifact, and links to the data docs."""
    create_markdown_artifact(markdown=markdown, key="curate-funnel")
    for suite, index in data_docs.items():
        create_link_artifact(
            link=index.as_uri(), link_text=f"GX data docs ({suite})", key=f"data-docs-{suite}"
        )


@task(name="log-curate-run", retries=2, retry_delay_seconds=[2, 5])
def log_to_mlflow(
    tracking_uri: str,
    experiment: str,
    params: CurateParams,
    metrics: dict[str, Any],
    hashes: dict[str, str],
    artifacts: list[Path],
) -> str:
    """Prefect task: the run's params, funnel counts and DVC hashes as an MLflow run; returns its id."""
    from registry.runs import log_stage_run

    flat = {"records_in": metrics["records_in"], "records_out": metrics["records_out"]}
    flat |= {f"dropped.{reason}": n for reason, n in metrics["dropped"].items()}
    flat |= {f"redacted.{entity}": n for entity, n in metrics["redacted"].items()}
    flat |= {f"split.{split}": n for split, n in metrics["splits"].items()}
    flat["preference_pairs"] = metrics["preference_pairs"]
    tags = {f"flywheel.dvc.{path}": md5 for path, md5 in hashes.items()}
    return log_stage_run(
        tracking_uri, experiment, "curate", params.model_dump(mode="json"), flat, tags, artifacts
    )
