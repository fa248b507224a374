"""Output formats: one curated row as a ChatML, Alpaca or ShareGPT training record.

Every format carries the whole exchange: the system prompt, the earlier turns,
the question and the answer. Only where each part goes differs:

- **chatml** (OpenAI chat messages, what TRL's SFTTrainer calls conversational
  language modelling): `{"id", "messages": [system?, *history, user, assistant]}`,
  the system turn only when the record had one.
- **alpaca** (Stanford Alpaca's three fields): `instruction` is what the user
  asked (the last user turn), `output` the answer, and `input` the context the
  question was asked in: the system prompt, then the earlier turns as a
  `User: ...` / `Assistant: ...` transcript, separated by a blank line; `""` for
  a single-turn record without a system prompt. This follows Alpaca's own split
  (instruction = the task, input = optional context for it); tools that want
  separate `system`/`history` fields (LLaMA-Factory) can read chatml instead.
- **sharegpt**: `{"id", "conversations": [{"from", "value"}]}` with `from` one of
  `system`, `human`, `gpt` (and `observation` for a tool turn, as LLaMA-Factory
  names it).

`write_jsonl` writes records with sorted keys through the same temp file,
fsync and rename as harvest's partitions, so equal records give equal bytes
and an equal md5 (what DVC compares).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from flywheel.settings import ChatFormat
from tasks.harvest.partitions import write_atomic

Message = dict[str, str]

SHAREGPT_FROM: dict[str, str] = {
    "system": "system",
    "user": "human",
    "assistant": "gpt",
    "tool": "observation",
}
_ALPACA_SPEAKER: dict[str, str] = {
    "system": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}


class MissingResponse(ValueError):
    """A row without an answer reached formatting (the failed-request filter should have dropped it)."""


def history_turns(history: str | None) -> list[Message]:
    """The earlier turns of a frame's `history` JSON string, as `{"role", "content"}` messages."""
    if not history or history == "[]":
        return []
    return [{"role": turn["role"], "content": turn["content"]} for turn in orjson.loads(history)]


def prompt_messages(system: str | None, history: str | None, prompt: str) -> list[Message]:
    """The conversation up to and including the user's question: `[system?, *history, user]`."""
    # "" means no system prompt (the frame's contract); a missing value reads the same
    messages: list[Message] = []
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    messages.extend(history_turns(history))
    messages.append({"role": "user", "content": prompt})
    return messages


def _chatml(row: Mapping[str, Any]) -> dict[str, Any]:
    messages = prompt_messages(row["system"], row["history"], row["prompt"])
    messages.append({"role": "assistant", "content": row["response"]})
    return {"id": row["request_id"], "messages": messages}


def _alpaca(row: Mapping[str, Any]) -> dict[str, Any]:
    system = row["system"]
    context: list[str] = [system] if isinstance(system, str) and system else []
    turns = history_turns(row["history"])
    if turns:
        context.append("\n".join(f"{_ALPACA_SPEAKER[t['role']]}: {t['content']}" for t in turns))
    return {
        "id": row["request_id"],
        "instruction": row["prompt"],
        "input": "\n\n".join(context),
        "output": row["response"],
    }


def _sharegpt(row: Mapping[str, Any]) -> dict[str, Any]:
    messages = prompt_messages(row["system"], row["history"], row["prompt"])
    messages.append({"role": "assistant", "content": row["response"]})
    return {
        "id": row["request_id"],
        "conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages],
    }


_FORMATTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "chatml": _chatml,
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
}
_NEEDED = ("request_id", "system", "history", "prompt", "response")


def to_records(frame: pd.DataFrame, fmt: ChatFormat = "chatml") -> list[dict[str, Any]]:
    """One training record per row of a curation frame, in frame order (records out = rows in).

    Raises `MissingResponse` for a row without an answer rather than skipping it,
    so the funnel's counts stay those of the steps that drop rows with a reason.
    """
    try:
        formatter = _FORMATTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(_FORMATTERS)}") from None
    if frame.empty:
        return []
    missing = frame["response"].isna()
    if missing.any():
        ids = frame.loc[missing, "request_id"].head(5).tolist()
        raise MissingResponse(f"{int(missing.sum())} rows have no response (e.g. {ids})")
    rows = frame.loc[:, list(_NEEDED)].to_dict("records")
    return [formatter(row) for row in rows]


def write_jsonl(records: Iterable[Mapping[str, Any]], path: Path) -> str:
    """Write `records` as JSON lines with sorted keys, atomically; return the file's md5.

    An empty iterable writes an empty file (an empty split is still an output).
    """
    option = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    return write_atomic(path, (orjson.dumps(record, option=option) for record in records))
