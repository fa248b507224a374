"""Harvest: read new records from a source by watermark, exactly once, into raw partitions."""

from tasks.harvest.harvest import (
    HarvestConfig,
    HarvestResult,
    MalformedShareExceeded,
    run_harvest,
)
from tasks.harvest.sources import JsonlFilesSource, RequestLogSource
from tasks.harvest.tasks import harvest_source, make_source, publish_harvest_summary

__all__ = [
    "HarvestConfig",
    "HarvestResult",
    "JsonlFilesSource",
    "MalformedShareExceeded",
    "RequestLogSource",
    "harvest_source",
    "make_source",
    "publish_harvest_summary",
    "run_harvest",
]
