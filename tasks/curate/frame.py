"""The curation frame: one row per harvested exchange, the contract every curate step shares.

Raw partitions hold `RequestRecord` JSON lines (one per request). Curation
works on a flat pandas frame built from them, so each step is a plain function
over columns:

| column | type | what it holds |
|---|---|---|
| request_id | str | the gateway's id (unique after `drop_redelivered`) |
| timestamp | datetime64[ns, UTC] | when the request arrived |
| application, model_name | str | served application and model |
| model_version, prompt_name, prompt_version | str or None | what answered |
| system | str | the system prompt ("" when the record had none) |
| history | str | earlier turns as JSON `[{"role", "content"}]`, "[]" for single-turn |
| prompt | str | the last user message: what the model was asked |
| response | str or None | what the model answered (None for failed requests) |
| roles | str | the message roles in order, comma-joined (e.g. "system,user") |
| status | str | "ok" or "error" |
| feedback | float | the user's score -1/0/1, NaN when unrated |
| prompt_tokens, completion_tokens | int | token counts the gateway measured |

Steps add columns of their own (e.g. `cluster` from dedup) and never change
the meaning of these.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

COLUMNS: tuple[str, ...] = (
    "request_id",
    "timestamp",
    "application",
    "model_name",
    "model_version",
    "prompt_name",
    "prompt_version",
    "system",
    "history",
    "prompt",
    "response",
    "roles",
    "status",
    "feedback",
    "prompt_tokens",
    "completion_tokens",
)
# Text columns that may carry what users typed or the model said (PII, normalisation).
TEXT_COLUMNS: tuple[str, ...] = ("system", "history", "prompt", "response")


def _row(record: dict) -> tuple:
    messages = record["messages"]
    system = ""
    turns: list[dict] = []
    for message in messages:
        if message["role"] == "system" and not turns and not system:
            system = message["content"]
        else:
            turns.append(message)
    # The prompt is the last user turn; anything before it is history.
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=-1)
    prompt = turns[last_user]["content"] if last_user >= 0 else ""
    history = (
        [{"role": m["role"], "content": m["content"]} for m in turns[:last_user]] if last_user > 0 else []
    )
    feedback = record.get("feedback")
    return (
        record["request_id"],
        record["timestamp"],
        record["application"],
        record["model_name"],
        record.get("model_version"),
        record.get("prompt_name"),
        record.get("prompt_version"),
        system,
        orjson.dumps(history).decode() if history else "[]",
        prompt,
        record.get("response"),
        ",".join(m["role"] for m in messages),
        record.get("status", "ok"),
        float(feedback["score"]) if feedback else np.nan,
        int(record["prompt_tokens"]),
        int(record["completion_tokens"]),
    )


def frame_from_records(records: Iterable[dict]) -> pd.DataFrame:
    """The curation frame of parsed `RequestRecord` dicts (already validated by harvest)."""
    rows = [_row(record) for record in records]
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame["feedback"] = frame["feedback"].astype("float64")
    frame["prompt_tokens"] = frame["prompt_tokens"].astype("int64")
    frame["completion_tokens"] = frame["completion_tokens"].astype("int64")
    return frame


def read_partitions(paths: Iterable[Path]) -> pd.DataFrame:
    """The curation frame of raw partition files (JSONL of `RequestRecord`), in path order."""
    records: list[dict] = []
    for path in paths:
        with path.open("rb") as handle:
            records.extend(orjson.loads(line) for line in handle if line.strip())
    frame = frame_from_records(records)
    # partition names are run-id hashes, not times: order rows by time for stable output
    return frame.sort_values(["timestamp", "request_id"], kind="stable", ignore_index=True)


def raw_partitions(raw_dir: Path) -> list[Path]:
    """Every valid raw partition under `raw_dir` (not the quarantine), sorted by name."""
    return sorted(p for p in raw_dir.glob("part-*.jsonl") if p.is_file())
