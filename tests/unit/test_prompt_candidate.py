"""Prompt candidates: few-shot examples chosen for diversity, written into the system prompt."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.train.prompt_candidate import (
    EXAMPLES_HEADER,
    choose_examples,
    diverse_indices,
    fewshot_system_prompt,
)


def _unit(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_k_center_covers_each_cluster_before_repeating_one() -> None:
    # given three tight clusters of questions, the first much larger than the others
    rng = np.random.default_rng(0)
    centres = np.eye(3, dtype=np.float32)
    rows = [centres[0] + rng.normal(0, 0.01, 3) for _ in range(20)]
    rows += [centres[1] + rng.normal(0, 0.01, 3) for _ in range(3)]
    rows += [centres[2] + rng.normal(0, 0.01, 3) for _ in range(3)]
    vectors = _unit([list(r) for r in rows])
    # when three examples are chosen
    picked = diverse_indices(vectors, 3)
    # then one comes from each cluster, not three from the big one
    clusters = sorted({0 if i < 20 else 1 if i < 23 else 2 for i in picked})
    assert clusters == [0, 1, 2], f"picked {picked} covers clusters {clusters}"
    assert diverse_indices(vectors, 3) == picked, "the choice is deterministic"


def test_identical_questions_stop_the_choice_early() -> None:
    vectors = _unit([[1, 0], [1, 0], [1, 0]])
    assert diverse_indices(vectors, 3) == [0], "duplicates add nothing after the first pick"
    assert diverse_indices(vectors[:0], 3) == [], "no rows, no examples"


def _record(question: str, answer: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_choose_examples_skips_repeats_overlong_answers_and_malformed_records() -> None:
    records = [
        _record("How much is Pro?", "$8 a month."),
        _record("How much is Pro?", "Another answer to the same question."),
        _record("Can I export?", "x" * 400),
        {"messages": [{"role": "user", "content": "no answer"}]},
        _record("Is there a free plan?", "Yes, with 3 notebooks."),
    ]
    seen: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return _unit([[1.0, float(i)] for i in range(len(texts))])

    examples = choose_examples(records, embed, k=5, max_answer_chars=300)
    assert seen == [["How much is Pro?", "Is there a free plan?"]], f"embedded once each: {seen}"
    expected = [("How much is Pro?", "$8 a month."), ("Is there a free plan?", "Yes, with 3 notebooks.")]
    assert sorted(examples) == expected, f"first answer per question, none overlong: {examples}"


@pytest.mark.parametrize("examples", [[], [("Q1?", "A1."), ("Q2?", "A2.")]])
def test_fewshot_prompt_keeps_the_base_and_lists_each_example(examples: list[tuple[str, str]]) -> None:
    text = fewshot_system_prompt("You are the support assistant.", examples)
    assert text.startswith("You are the support assistant."), text
    for question, answer in examples:
        assert f"Q: {question}\nA: {answer}" in text, f"example {question!r} missing from:\n{text}"
    assert (EXAMPLES_HEADER in text) == bool(examples), "the header only when there are examples"
