"""A prompt candidate from curated data: the system prompt plus few-shot examples chosen for diversity.

The examples are picked by greedy k-center over MiniLM embeddings of the
questions: each next example is the question farthest from every one already
picked, so a handful of examples covers the spread of what customers ask
instead of k rephrasings of the most common question. The examples go into the
system prompt's text (not as extra chat turns) because the gateway serves a
prompt version by its system message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Embed = Callable[[list[str]], np.ndarray]
EXAMPLES_HEADER = "Answers to common questions, in the expected style:"


def question_and_answer(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The last user question and the assistant's answer of a ChatML record (None if it has neither)."""
    messages = record.get("messages") or []
    if len(messages) < 2 or messages[-1].get("role") != "assistant" or messages[-2].get("role") != "user":
        return None
    return str(messages[-2]["content"]).strip(), str(messages[-1]["content"]).strip()


def diverse_indices(vectors: np.ndarray, k: int) -> list[int]:
    """Greedy k-center: start nearest the centroid, then repeatedly take the row farthest from the picked.

    `vectors` are L2-normalised rows; distance is 1 - cosine. Deterministic
    (ties go to the lowest index). Returns min(k, rows) distinct indices.
    """
    n = len(vectors)
    if n == 0 or k <= 0:
        return []
    centroid = vectors.mean(axis=0)
    first = int(np.argmax(vectors @ centroid))
    picked = [first]
    nearest = 1.0 - vectors @ vectors[first]  # distance of each row to its nearest picked row
    while len(picked) < min(k, n):
        candidate = int(np.argmax(nearest))
        if nearest[candidate] <= 0.0:
            break  # the rest duplicate what is picked
        picked.append(candidate)
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[candidate])
    return picked


def choose_examples(
    records: Sequence[Mapping[str, Any]], embed: Embed, k: int, max_answer_chars: int = 300
) -> list[tuple[str, str]]:
    """Up to `k` (question, answer) pairs spread over the questions' embedding space.

    Overlong answers are skipped (they would crowd the context window), and a
    question asked more than once counts once.
    """
    pairs: dict[str, str] = {}
    for record in records:
        pair = question_and_answer(record)
        if pair is not None and pair[0] and 0 < len(pair[1]) <= max_answer_chars:
            pairs.setdefault(pair[0], pair[1])
    questions = list(pairs)
    if not questions:
        return []
    vectors = np.asarray(embed(questions), dtype=np.float32)
    return [(questions[i], pairs[questions[i]]) for i in diverse_indices(vectors, k)]


def fewshot_system_prompt(base: str, examples: Sequence[tuple[str, str]]) -> str:
    """The base system prompt followed by the examples as Q/A lines."""
    if not examples:
        return base
    lines = [base.rstrip(), "", EXAMPLES_HEADER]
    for question, answer in examples:
        lines += [f"Q: {question}", f"A: {answer}"]
    return "\n".join(lines)
