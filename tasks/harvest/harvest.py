"""One harvest run: read after the watermark, write the partitions, then commit the watermark.

Exactly once, by construction:

1. read the lines after the committed watermark;
2. write `part-<run id>.jsonl` (valid records) and `quarantine/part-<run id>.jsonl`
   (rejected lines with their reasons), each via temp file + fsync + rename;
3. only then commit the new watermark (temp file + fsync + rename).

The run id is a hash of (source id, start watermark). A crash before step 3
leaves the old watermark, so the re-run starts at the same place, gets the same
run id and overwrites the same files: no record is lost (the watermark did not
move) and none is duplicated (the file name did not change). The id leaves out
the end watermark on purpose, so a re-run that reads more (the source grew
meanwhile) still replaces the crashed run's partition rather than adding one.

`crash_point(name)` calls mark the steps between which a kill must be safe; they
do nothing unless the test variable `FLYWHEEL_TEST_CRASH_AT` names one
(tests/integration/test_harvest_crash.py SIGKILLs a real harvest at each).

When the malformed share passes the threshold the run writes the quarantine
(for inspection), removes its valid partition, does not commit the watermark
and raises `MalformedShareExceeded`: a fixed re-run replaces the same files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from flywheel.schemas import RequestRecord
from tasks.harvest.partitions import crash_point, write_or_remove
from tasks.harvest.partitions import run_id as make_run_id
from tasks.harvest.quarantine import classify, quarantine_entry
from tasks.harvest.sources import Source
from tasks.harvest.watermark import commit_watermark, load_watermark

DEFAULT_MAX_RECORD_BYTES = 1 << 20  # 1 MiB: the demo's oversize messages fit, a 10 MB line does not


class HarvestConfig(BaseModel):
    """One run's settings (the flow fills them from the `harvest` params section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_record_bytes: int = Field(DEFAULT_MAX_RECORD_BYTES, ge=1)
    max_malformed_share: float = Field(0.2, ge=0.0, le=1.0)
    limit: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class HarvestResult:
    """What a run read, kept and quarantined, and where it wrote them."""

    run_id: str
    source: str
    start_watermark: dict[str, Any]
    end_watermark: dict[str, Any]
    n_read: int
    n_valid: int
    n_quarantined: int
    reasons: dict[str, int]
    partition: Path | None
    quarantine: Path | None
    md5: dict[str, str] = field(default_factory=dict)
    committed: bool = True

    @property
    def malformed_share(self) -> float:
        return self.n_quarantined / self.n_read if self.n_read else 0.0


class MalformedShareExceeded(RuntimeError):
    """Too many malformed records: the run stored its quarantine but did not advance."""

    def __init__(self, result: HarvestResult, threshold: float) -> None:
        self.result = result
        reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(result.reasons.items()))
        super().__init__(
            f"{result.n_quarantined} of {result.n_read} records malformed "
            f"({result.malformed_share:.1%} > {threshold:.1%}): {reasons}; "
            f"quarantine at {result.quarantine}; watermark not committed"
        )


def partition_paths(raw_dir: Path, run_id: str) -> tuple[Path, Path]:
    """The valid and quarantine partition files of a run."""
    name = f"part-{run_id}.jsonl"
    return raw_dir / name, raw_dir / "quarantine" / name


def run_harvest(
    source: Source,
    raw_dir: Path,
    state_dir: Path,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    max_malformed_share: float = 0.2,
    limit: int | None = None,
) -> HarvestResult:
    """Harvest the records after the source's watermark into one raw partition, exactly once."""
    start = load_watermark(state_dir, source.source_id)
    batch = source.read(start, limit)
    crash_point("after_read")
    run_id = make_run_id(source.source_id, start)
    valid: list[bytes] = []
    rejected: list[bytes] = []
    reasons: Counter[str] = Counter()
    for line in batch.lines:
        outcome = classify(line.data, max_record_bytes)
        if isinstance(outcome, RequestRecord):
            valid.append(outcome.model_dump_json().encode())
        else:
            reasons[outcome.reason] += 1
            entry = quarantine_entry(outcome, source.source_id, line.position, line.data)
            rejected.append(orjson.dumps(entry))
    part_path, quarantine_path = partition_paths(raw_dir, run_id)
    exceeded = bool(batch.lines) and len(rejected) / len(batch.lines) > max_malformed_share
    md5: dict[str, str] = {}
    quarantine_md5 = write_or_remove(quarantine_path, rejected)
    crash_point("after_quarantine")
    part_md5 = write_or_remove(part_path, [] if exceeded else valid, tmp_written="partition_tmp_written")
    crash_point("after_partition")
    if quarantine_md5:
        md5[str(quarantine_path)] = quarantine_md5
    if part_md5:
        md5[str(part_path)] = part_md5
    result = HarvestResult(
        run_id=run_id,
        source=source.source_id,
        start_watermark=start,
        end_watermark=batch.end_watermark,
        n_read=len(batch.lines),
        n_valid=len(valid),
        n_quarantined=len(rejected),
        reasons=dict(reasons),
        partition=part_path if part_md5 else None,
        quarantine=quarantine_path if quarantine_md5 else None,
        md5=md5,
        committed=not exceeded,
    )
    if exceeded:
        raise MalformedShareExceeded(result, max_malformed_share)
    if batch.end_watermark != start:
        commit_watermark(state_dir, source.source_id, batch.end_watermark, run_id)
        crash_point("after_commit")
    return result


def summary_markdown(result: HarvestResult) -> str:
    """A markdown table of a run's counts, for the Prefect UI."""
    rows = "\n".join(f"| quarantined: {reason} | {n} |" for reason, n in sorted(result.reasons.items()))
    return (
        f"# Harvest run `{result.run_id}`\n\n"
        f"Source: `{result.source}`  \n"
        f"Partition: `{result.partition}`  \n"
        f"Quarantine: `{result.quarantine}`\n\n"
        f"| records | count |\n|---|---:|\n"
        f"| read | {result.n_read} |\n| valid | {result.n_valid} |\n"
        f"| quarantined | {result.n_quarantined} |\n{rows}\n"
    )
