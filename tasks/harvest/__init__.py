"""Harvest: read new records from a source by watermark, exactly once, into raw partitions."""

from tasks.harvest.harvest import (
    HarvestConfig,
    HarvestResult,
    MalformedShareExceeded,
    run_harvest,
)
from tasks.harvest.sources import (
    FilesSource,
    MissingFilesystem,
    RequestLogSource,
    SqlTableSource,
    UnreadableFile,
    make_source,
)
from tasks.harvest.tasks import harvest_source, publish_harvest_summary, record_raw_with_dvc, source_url

__all__ = [
    "FilesSource",
    "HarvestConfig",
    "HarvestResult",
    "MalformedShareExceeded",
    "MissingFilesystem",
    "RequestLogSource",
    "SqlTableSource",
    "UnreadableFile",
    "harvest_source",
    "make_source",
    "publish_harvest_summary",
    "record_raw_with_dvc",
    "run_harvest",
    "source_url",
]
