"""harvest: read new records from the request log or JSONL files into a raw partition, exactly once."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flywheel.settings import Environment, load_params, override
from tasks.harvest import HarvestConfig, harvest_source, publish_harvest_summary


@flow(name="harvest", log_prints=True)
def harvest(
    source: Literal["requestlog", "files"] | None = None,
    url: str | None = None,
    limit: int | None = None,
) -> dict[str, object]:
    """Harvest new records by watermark into `data/raw/`, malformed ones into its quarantine.

    1. read params (`harvest` section) and where things run (data dir, request log, home)
    2. harvest the source after its watermark: write partitions, then commit the watermark
    3. publish a summary artifact (counts read, valid, quarantined by reason)
    """
    params = override(load_params().harvest, source=source, limit=limit)
    env = Environment()
    default_url = (
        env.request_log_uri if params.source == "requestlog" else str(env.data_dir / params.incoming_dir)
    )
    config = HarvestConfig(
        max_record_bytes=params.max_record_bytes,
        max_malformed_share=params.max_malformed_share,
        limit=params.limit,
    )
    raw_dir = env.data_dir / params.raw_dir
    result = harvest_source(params.source, url or default_url, raw_dir, env.home / "harvest", config)
    publish_harvest_summary(result)
    return {"run_id": result.run_id, "n_valid": result.n_valid, "reasons": result.reasons}
