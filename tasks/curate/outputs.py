"""What curation writes: the splits in the chosen chat format, preference pairs, drops, the funnel.

Every file is written atomically and deterministically (sorted keys, frame
order), so the same raw partitions and params give the same bytes: `dvc repro`
reproduces the md5s the flow recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from flywheel.settings import ChatFormat
from tasks.curate.curate import Curated
from tasks.curate.formats import to_records, write_jsonl
from tasks.curate.preferences import preference_records
from tasks.curate.split import SPLITS
from tasks.harvest.partitions import write_atomic

PAIRS_FILE = "preferences.jsonl"
DROPPED_FILE = "dropped.jsonl"
FUNNEL_FILE = "funnel.json"


def split_file(split: str) -> str:
    return f"{split}.jsonl"


def output_files() -> tuple[str, ...]:
    """Every file a curation run writes into its output dir (what `dvc.yaml` lists)."""
    return (*(split_file(s) for s in SPLITS), PAIRS_FILE, DROPPED_FILE, FUNNEL_FILE)


def funnel_metrics(curated: Curated, n_raw_quarantined: int = 0) -> dict[str, Any]:
    """The funnel as numbers: in, out, drops by step and reason, redactions, pairs, splits.

    `in = out + sum(dropped)` holds exactly (checked by `Funnel.check`).
    """
    funnel = curated.funnel
    return {
        "records_in": funnel.n_in,
        "records_out": funnel.n_out,
        "harvest_quarantined": n_raw_quarantined,
        "dropped": funnel.dropped_by_reason(),
        "redacted": curated.redactions(),
        "splits": curated.split_counts(),
        "preference_pairs": len(curated.pairs),
        "steps": funnel.table(),
    }


def write_curated(
    curated: Curated, out_dir: Path, fmt: ChatFormat, metrics: dict[str, Any]
) -> dict[str, str]:
    """Write every output file into `out_dir`; return file name -> md5."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md5: dict[str, str] = {}
    for split in SPLITS:
        records = to_records(curated.split_frame(split), fmt)
        md5[split_file(split)] = write_jsonl(records, out_dir / split_file(split))
    pairs = curated.pairs
    records = [
        {**record, "split": split}
        for record, split in zip(preference_records(pairs), pairs["split"].tolist(), strict=True)
    ]
    md5[PAIRS_FILE] = write_jsonl(records, out_dir / PAIRS_FILE)
    md5[DROPPED_FILE] = write_atomic(out_dir / DROPPED_FILE, _dropped_lines(curated))
    funnel = orjson.dumps(metrics, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    md5[FUNNEL_FILE] = write_atomic(out_dir / FUNNEL_FILE, [funnel])
    return md5


def _dropped_lines(curated: Curated) -> Iterator[bytes]:
    """`{"request_id": ..., "step": ..., "reason": ...}` per dropped record, in funnel order.

    The same bytes as `orjson.dumps` of each dict, built as id + the step's shared tail:
    a million dicts to serialise cost seconds, a million strings a fraction of one.
    """
    for step in curated.funnel.steps:
        for reason, ids in step.dropped.items():
            tail = b"," + orjson.dumps({"step": step.step, "reason": reason})[1:]
            yield from (b'{"request_id":' + orjson.dumps(request_id) + tail for request_id in ids)


def funnel_markdown(metrics: dict[str, Any], hashes: dict[str, str], note: str = "") -> str:
    """The funnel for the Prefect UI: in, quarantined, redacted, removed, filtered, kept per split."""
    lines = [
        "# Curation funnel",
        "",
        f"Records in: **{metrics['records_in']}** "
        f"(harvest quarantined another {metrics['harvest_quarantined']})  ",
        f"Records out: **{metrics['records_out']}**; preference pairs: {metrics['preference_pairs']}",
        "",
        "| step | in | out | dropped by reason |",
        "|---|---:|---:|---|",
    ]
    for step in metrics["steps"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in step["dropped"].items()) or "-"
        lines.append(f"| {step['step']} | {step['in']} | {step['out']} | {reasons} |")
    lines += ["", "| redacted entity | count |", "|---|---:|"]
    lines += [f"| {entity} | {n} |" for entity, n in metrics["redacted"].items()]
    lines += ["", "| split | records |", "|---|---:|"]
    lines += [f"| {split} | {n} |" for split, n in metrics["splits"].items()]
    if hashes:
        lines += ["", "| DVC output | md5 |", "|---|---|"]
        lines += [f"| `{path}` | `{md5}` |" for path, md5 in hashes.items()]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"
