"""Curate output: ChatML/Alpaca/ShareGPT records, deterministic JSONL, DPO preference pairs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from flywheel.schemas import ChatMessage, Feedback
from tasks.curate.formats import MissingResponse, to_records, write_jsonl
from tasks.curate.frame import frame_from_records
from tasks.curate.preferences import PAIR_COLUMNS, pair_id, preference_pairs, preference_records
from tests.helpers.request_records import make_record

SYSTEM = "You are a support assistant."
HISTORY = [("user", "Hi, I need help with my order."), ("assistant", "Sure, what is the order number?")]


def _record(i: int, system: str | None = SYSTEM, history: bool = False, **changes: Any) -> dict:
    messages = [ChatMessage(role="system", content=system)] if system else []
    if history:
        messages += [ChatMessage(role=role, content=text) for role, text in HISTORY]  # type: ignore[arg-type]  # literal roles
    messages.append(ChatMessage(role="user", content=changes.pop("prompt", f"Question number {i}?")))
    return make_record(i, messages=messages, **changes).model_dump(mode="json")


def _frame(*records: dict) -> pd.DataFrame:
    return frame_from_records(records)


# ---------------------------------------------------------------- formats


def _chatml_parts(record: dict) -> dict[str, Any]:
    messages = record["messages"]
    system = [m["content"] for m in messages if m["role"] == "system"]
    return {
        "system": system[0] if system else "",
        "history": [(m["role"], m["content"]) for m in messages[len(system) : -2]],
        "prompt": messages[-2]["content"] if messages[-2]["role"] == "user" else None,
        "response": messages[-1]["content"] if messages[-1]["role"] == "assistant" else None,
    }


def _alpaca_parts(record: dict) -> dict[str, Any]:
    return {
        "system_in_input": SYSTEM in record["input"],
        "history_in_input": all(text in record["input"] for _, text in HISTORY),
        "prompt": record["instruction"],
        "response": record["output"],
    }


def _sharegpt_parts(record: dict) -> dict[str, Any]:
    turns = record["conversations"]
    system = [t["value"] for t in turns if t["from"] == "system"]
    return {
        "system": system[0] if system else "",
        "history": [(t["from"], t["value"]) for t in turns[len(system) : -2]],
        "prompt": turns[-2]["value"] if turns[-2]["from"] == "human" else None,
        "response": turns[-1]["value"] if turns[-1]["from"] == "gpt" else None,
    }


@pytest.mark.parametrize("history", [False, True], ids=["single-turn", "multi-turn"])
def test_chatml_keeps_every_part_in_its_message(history: bool) -> None:
    # given a record with a system prompt (and, multi-turn, earlier turns)
    frame = _frame(_record(1, history=history))
    # when formatted as chatml
    [record] = to_records(frame, "chatml")
    # then system, history, question and answer are messages in chat order
    parts = _chatml_parts(record)
    assert record["id"] == "req-000001", f"the record id should be the request id: {record}"
    assert parts["system"] == SYSTEM, f"the system prompt should be the first message: {record}"
    assert parts["history"] == (HISTORY if history else []), (
        f"earlier turns should precede the question: {record}"
    )
    assert parts["prompt"] == "Question number 1?", f"the user question should be second to last: {record}"
    assert parts["response"] == "Answer 1.", f"the answer should be the last, assistant message: {record}"


def test_chatml_has_no_system_turn_without_a_system_prompt() -> None:
    # given a record without a system prompt
    frame = _frame(_record(2, system=None))
    # when formatted
    [record] = to_records(frame)
    # then the messages start at the user turn
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["user", "assistant"], f"no empty system turn expected, got roles {roles}"


@pytest.mark.parametrize("history", [False, True], ids=["single-turn", "multi-turn"])
def test_alpaca_puts_the_question_in_instruction_and_the_context_in_input(history: bool) -> None:
    # given a record with a system prompt (and, multi-turn, earlier turns)
    frame = _frame(_record(3, history=history))
    # when formatted as alpaca
    [record] = to_records(frame, "alpaca")
    # then the question is the instruction, the answer the output, the context the input
    parts = _alpaca_parts(record)
    assert set(record) == {"id", "instruction", "input", "output"}, f"alpaca has four fields: {record}"
    assert parts["prompt"] == "Question number 3?", f"instruction should be the question: {record}"
    assert parts["response"] == "Answer 3.", f"output should be the answer: {record}"
    assert parts["system_in_input"], f"the system prompt should be in input: {record}"
    assert parts["history_in_input"] == history, f"earlier turns should be in input iff any: {record}"


def test_alpaca_input_is_empty_for_a_bare_question() -> None:
    # given a single-turn record without a system prompt
    [record] = to_records(_frame(_record(4, system=None)), "alpaca")
    # then there is no context
    assert record["input"] == "", f"a bare question has no input, got {record['input']!r}"


@pytest.mark.parametrize("history", [False, True], ids=["single-turn", "multi-turn"])
def test_sharegpt_speakers_are_system_human_gpt(history: bool) -> None:
    # given a record with a system prompt (and, multi-turn, earlier turns)
    frame = _frame(_record(5, history=history))
    # when formatted as sharegpt
    [record] = to_records(frame, "sharegpt")
    # then every part is a turn with ShareGPT's speaker names
    parts = _sharegpt_parts(record)
    expected_history = [("human", HISTORY[0][1]), ("gpt", HISTORY[1][1])] if history else []
    assert parts["system"] == SYSTEM, f"the system prompt should be the first turn: {record}"
    assert parts["history"] == expected_history, f"earlier turns should precede the question: {record}"
    assert parts["prompt"] == "Question number 5?", f"the question should be a human turn: {record}"
    assert parts["response"] == "Answer 5.", f"the answer should be the last, gpt turn: {record}"


@pytest.mark.parametrize("fmt", ["chatml", "alpaca", "sharegpt"])
def test_every_format_handles_an_empty_frame(fmt: str) -> None:
    # given an empty frame
    empty = _frame()
    # when formatted
    records = to_records(empty, fmt)  # type: ignore[arg-type]  # parametrized literal
    # then there are no records
    assert records == [], f"{fmt}: an empty frame gives no records, got {records}"


@pytest.mark.parametrize("fmt", ["chatml", "alpaca", "sharegpt"])
def test_records_come_one_per_row_in_frame_order(fmt: str) -> None:
    # given three rows
    frame = _frame(_record(3), _record(1), _record(2, history=True))
    # when formatted
    records = to_records(frame, fmt)  # type: ignore[arg-type]  # parametrized literal
    # then one record per row, in order
    assert [r["id"] for r in records] == frame["request_id"].tolist(), f"{fmt}: one record per row, in order"


def test_a_row_without_a_response_is_an_error_not_a_silent_skip() -> None:
    # given a failed request that no filter removed
    frame = _frame(_record(1), _record(2, response=None, status="error"))
    # when formatted, then formatting refuses
    with pytest.raises(MissingResponse, match="req-000002"):
        to_records(frame)


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        to_records(_frame(_record(1)), "vicuna")  # type: ignore[arg-type]  # the point of the test


def test_write_jsonl_is_deterministic_and_returns_the_md5(tmp_path: Path) -> None:
    # given the records of a small frame
    records = to_records(_frame(_record(1), _record(2, history=True)))
    # when written twice, the second time with keys in another order
    md5 = write_jsonl(records, tmp_path / "a.jsonl")
    shuffled = [dict(reversed(list(r.items()))) for r in records]
    md5_again = write_jsonl(shuffled, tmp_path / "b.jsonl")
    # then the bytes are equal, the md5 is the file's, and each line reads back as the record
    data = (tmp_path / "a.jsonl").read_bytes()
    assert md5 == md5_again, "equal records should give equal files whatever their key order"
    assert md5 == hashlib.md5(data).hexdigest(), "the returned md5 should be the file's"  # md5 as DVC uses
    assert [orjson.loads(line) for line in data.splitlines()] == records, "lines should read back as records"
    assert not list(tmp_path.glob(".*.tmp")), "no temp file should be left behind"


def test_write_jsonl_of_nothing_writes_an_empty_file(tmp_path: Path) -> None:
    md5 = write_jsonl([], tmp_path / "empty.jsonl")
    assert (tmp_path / "empty.jsonl").read_bytes() == b"", "an empty split is an empty file"
    assert md5 == hashlib.md5(b"").hexdigest(), "md5 of the empty file"  # md5 as DVC uses


# ---------------------------------------------------------------- preference pairs


def _rated(i: int, cluster: int, score: int | None, response: str, **changes: Any) -> dict:
    feedback = Feedback(score=score) if score is not None else None  # type: ignore[arg-type]  # test literal
    return {**_record(i, response=response, feedback=feedback, **changes), "cluster": cluster}


def _clustered(*rows: dict) -> pd.DataFrame:
    frame = frame_from_records(rows)
    frame["cluster"] = np.array([r["cluster"] for r in rows], dtype="int64")
    return frame


def test_a_pair_needs_both_ratings_in_one_cluster() -> None:
    # given cluster 1 rated both ways, cluster 2 only up, cluster 3 only down and unrated
    frame = _clustered(
        _rated(1, 1, 1, "Good answer."),
        _rated(2, 1, -1, "Bad answer."),
        _rated(3, 2, 1, "Fine."),
        _rated(4, 2, None, "Unrated."),
        _rated(5, 3, -1, "Wrong."),
        _rated(6, 3, 0, "Meh."),
    )
    # when pairs are built
    pairs, counts = preference_pairs(frame)
    # then only cluster 1 gives a pair: its liked answer chosen, its disliked one rejected
    assert pairs["cluster"].tolist() == [1], f"only the cluster rated both ways pairs up: {pairs}"
    pair = pairs.iloc[0]
    assert (pair["chosen"], pair["rejected"]) == ("Good answer.", "Bad answer."), f"wrong sides: {pair}"
    assert pair["id"] == pair_id("req-000001", "req-000002"), "the pair id comes from its two requests"
    assert counts == {
        "rows_in": 6,
        "rated_up": 2,
        "rated_down": 2,
        "contested": 0,
        "over_cap": 0,
        "clusters_out": 1,
        "pairs_out": 1,
    }, f"counts: {counts}"


def test_equal_answers_rated_both_ways_make_no_pair() -> None:
    # given one answer text rated up by one user and down by another
    frame = _clustered(_rated(1, 7, 1, "Same text."), _rated(2, 7, -1, "Same text."))
    # when pairs are built
    pairs, counts = preference_pairs(frame)
    # then there is nothing to prefer
    assert pairs.empty, f"equal answers cannot be chosen over each other: {pairs}"
    assert counts["contested"] == 1, f"the contested answer should be counted: {counts}"


def test_an_answer_takes_the_side_most_of_its_ratings_take() -> None:
    # given answer A rated up twice and down once, answer B rated down, answer C up and down once each
    frame = _clustered(
        _rated(1, 8, -1, "A."),
        _rated(2, 8, 1, "A."),
        _rated(3, 8, 1, "A."),
        _rated(4, 8, -1, "B."),
        _rated(5, 8, 1, "C."),
        _rated(6, 8, -1, "C."),
    )
    # when pairs are built
    pairs, counts = preference_pairs(frame)
    # then A (by its oldest up-vote) is chosen over B, and C is on neither side
    got = list(zip(pairs["chosen"], pairs["rejected"], pairs["chosen_request_id"], strict=True))
    assert got == [("A.", "B.", "req-000002")], f"A should be preferred to B, C left out: {got}"
    assert counts["contested"] == 1, f"C is contested: {counts}"


def test_pairs_are_capped_per_cluster_and_mix_answers() -> None:
    # given a cluster with 3 distinct liked and 3 distinct disliked answers (9 candidates)
    rows = [_rated(i, 4, 1, f"Good {i}.") for i in range(3)]
    rows += [_rated(10 + i, 4, -1, f"Bad {i}.") for i in range(3)]
    frame = _clustered(*rows)
    # when at most 4 pairs are kept
    pairs, counts = preference_pairs(frame, max_pairs_per_cluster=4)
    # then 4 pairs, the first ones along the diagonals of the grid
    got = list(zip(pairs["chosen"], pairs["rejected"], strict=True))
    assert got == [
        ("Good 0.", "Bad 0."),
        ("Good 0.", "Bad 1."),
        ("Good 1.", "Bad 0."),
        ("Good 0.", "Bad 2."),
    ], f"the cap should keep the first pairs of the diagonal order: {got}"
    assert counts["over_cap"] == 5, f"the 5 candidates over the cap should be counted: {counts}"


def test_a_repeated_answer_pairs_once() -> None:
    # given the same liked answer given three times
    rows = [_rated(i, 2, 1, "Good.") for i in range(3)] + [_rated(9, 2, -1, "Bad.")]
    pairs, _ = preference_pairs(_clustered(*rows))
    assert len(pairs) == 1, f"one distinct liked answer x one disliked answer is one pair: {pairs}"
    assert pairs.iloc[0]["chosen_request_id"] == "req-000000", "the oldest of equal answers represents them"


def test_answers_in_different_conversation_contexts_do_not_pair() -> None:
    # given a liked single-turn answer and a disliked answer to the same words after other turns
    frame = _clustered(_rated(1, 3, 1, "Good."), _rated(2, 3, -1, "Bad.", history=True))
    pairs, _ = preference_pairs(frame)
    assert pairs.empty, f"a follow-up is not the same question as a fresh one: {pairs}"


def test_pairs_do_not_depend_on_row_order() -> None:
    # given rated rows over several clusters, in two orders
    rows = [_rated(i, i % 3, 1 if i % 2 else -1, f"Answer {i}.") for i in range(12)]
    frame = _clustered(*rows)
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    # when pairs are built from each
    a, counts_a = preference_pairs(frame)
    b, counts_b = preference_pairs(shuffled)
    # then they are the same
    pd.testing.assert_frame_equal(a, b, obj="pairs of a shuffled frame")
    assert counts_a == counts_b, "counts should not depend on row order"


def test_pair_records_are_trl_conversational_preferences() -> None:
    # given a multi-turn pair
    frame = _clustered(_rated(1, 5, 1, "Good.", history=True), _rated(2, 5, -1, "Bad.", history=True))
    pairs, _ = preference_pairs(frame)
    # when written as records
    [record] = preference_records(pairs)
    # then the prompt is the conversation up to the question, chosen/rejected one assistant turn each
    assert record["prompt"] == [
        {"role": "system", "content": SYSTEM},
        *({"role": role, "content": text} for role, text in HISTORY),
        {"role": "user", "content": "Question number 1?"},
    ], f"the prompt should be the messages up to the user turn: {record['prompt']}"
    assert record["chosen"] == [{"role": "assistant", "content": "Good."}], f"chosen: {record}"
    assert record["rejected"] == [{"role": "assistant", "content": "Bad."}], f"rejected: {record}"


def test_preference_pairs_of_an_empty_frame() -> None:
    # given an empty frame with a cluster column
    empty = _frame().assign(cluster=pd.Series(dtype="int64"))
    # when pairs are built
    pairs, counts = preference_pairs(empty)
    # then no pairs, with the columns still there
    assert list(pairs.columns) == list(PAIR_COLUMNS), f"columns should exist on no pairs: {pairs.columns}"
    assert counts["rows_in"] == 0 and counts["pairs_out"] == 0, f"counts: {counts}"
    assert preference_records(pairs) == [], "no pairs, no records"


def test_preference_pairs_need_a_cluster_column() -> None:
    with pytest.raises(KeyError, match="cluster"):
        preference_pairs(_frame(_record(1)))


def test_rated_rows_sort_as_pandas_sorts_them() -> None:
    """Arrow's byte order of UTF-8 is Python's code point order; nulls go last, as in pandas."""
    from tasks.curate.preferences import _sorted

    frame = pd.DataFrame(
        {
            "cluster": [2, 1, 1, 1, 2, 1],
            "history": ["[]", "[é]", "[]", "[z]", "[]", "[\U0001f600]"],
            "timestamp": pd.to_datetime(
                ["2026-01-02", "2026-01-01", None, "2026-01-01", "2026-01-01", "2026-01-03"], utc=True
            ),
            "request_id": ["b", "ä", "a", "c", "Z", "e"],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    by = ["cluster", "history", "timestamp", "request_id"]
    pd.testing.assert_frame_equal(_sorted(frame, by), frame.sort_values(by, kind="stable"))
