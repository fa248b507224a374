"""harvest: read new records from the request log, files or a SQL table into a raw partition, exactly once."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flywheel.settings import Environment, load_params, override
from tasks.harvest import (
    HarvestConfig,
    harvest_source,
    publish_harvest_summary,
    record_raw_with_dvc,
    source_url,
)


@flow(name="harvest", log_prints=True)
def harvest(
    source: Literal["requestlog", "files", "sql"] | None = None,
    url: str | None = None,
    limit: int | None = None,
) -> dict[str, object]:
    """Harvest new records by watermark into `data/raw/`, malformed ones into its quarantine.

    `url` defaults to the request log, or the incoming dir for `files` (any fsspec
    URL of *.jsonl/*.parquet); `sql` needs one: `<SQLAlchemy URL>?table=T&key=id`.

    1. read params (`harvest` section) and where things run (data dir, request log, home)
    2. harvest the source after its watermark: write partitions, then commit the watermark
    3. version `data/raw/` with DVC (`dvc add`, push) when the data dir is in a DVC repo
    4. publish a summary artifact (counts read, valid, quarantined by reason)
    """
    params = override(load_params().harvest, source=source, limit=limit)
    env = Environment()
    where = source_url(params.source, url, env.request_log_uri, env.data_dir / params.incoming_dir)
    config = HarvestConfig(
        max_record_bytes=params.max_record_bytes,
        max_malformed_share=params.max_malformed_share,
        limit=params.limit,
    )
    raw_dir = env.data_dir / params.raw_dir
    result = harvest_source(params.source, where, raw_dir, env.home / "harvest", config)
    versioned = record_raw_with_dvc(raw_dir)
    publish_harvest_summary(result)
    print(versioned.note or f"data/raw versioned: {versioned.hashes}")
    return {
        "run_id": result.run_id,
        "n_valid": result.n_valid,
        "reasons": result.reasons,
        "dvc": versioned.hashes,
    }
