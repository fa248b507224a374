"""The curation frame: the vectorised reader agrees with the per-record path, row for row."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd

from tasks.curate.frame import frame_from_records, read_partitions


def _record(i: int, messages: list[dict], response: str | None) -> dict:
    return {
        "request_id": f"req-{i}",
        "timestamp": f"2026-11-0{1 + i % 9}T10:00:00+00:00",
        "application": "support-assistant",
        "model_name": "smollm2",
        "model_version": None if i % 2 else "3",
        "prompt_name": "support",
        "prompt_version": "1",
        "messages": messages,
        "response": response,
        "status": "ok" if response is not None else "error",
        "feedback": {"score": 1, "comment": None} if i % 3 == 0 else None,
        "prompt_tokens": 10 + i,
        "completion_tokens": 5,
    }


def _records() -> list[dict]:
    system = {"role": "system", "content": "You are helpful."}
    question = {"role": "user", "content": "How much is the Pro plan?"}
    return [
        _record(0, [system, question], "It costs $8."),
        _record(1, [question], "It costs $8."),
        _record(2, [system, question], None),
        _record(
            3,
            [
                system,
                question,
                {"role": "assistant", "content": "$8."},
                {"role": "user", "content": "Yearly?"},
            ],
            "$80 a year.",
        ),
        _record(4, [{"role": "assistant", "content": "Hi"}], "odd order"),
        _record(5, [system, {"role": "user", "content": "Do you support SSO?"}], "Yes, on Business."),
    ]


def test_partition_reader_matches_the_per_record_path(tmp_path: Path) -> None:
    records = _records()
    part = tmp_path / "part-0001.jsonl"
    part.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))

    fast = read_partitions([part])
    slow = frame_from_records(records)

    pd.testing.assert_frame_equal(fast, slow)
    assert fast.loc[3, "history"] != "[]" and fast.loc[3, "prompt"] == "Yearly?"
    assert fast.loc[2, "response"] is None


def test_repeated_texts_share_one_string(tmp_path: Path) -> None:
    part = tmp_path / "part-0001.jsonl"
    part.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _records()))

    frame = read_partitions([part])

    # one Python object per distinct value: cheap to build, and later hashing is cached
    assert frame.loc[0, "prompt"] is frame.loc[1, "prompt"]
    assert frame.loc[0, "response"] is frame.loc[1, "response"]
    assert frame.loc[0, "application"] is frame.loc[5, "application"]
