"""Normalisation, filters and the funnel's books: plain functions over small frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.demo import load_knowledge
from flywheel.demo.simulated_user import HashingEmbedder
from flywheel.demo.traffic import INJECTION_PROMPTS
from tasks.curate.filters import (
    INJECTION_SEEDS,
    failed_requests,
    injection_similarity,
    length_and_language,
    quality,
    safety_patterns,
)
from tasks.curate.frame import frame_from_records
from tasks.curate.normalise import normalise, normalise_text, strip_filler
from tasks.curate.steps import Funnel, FunnelMismatch, StepResult


def record(i: int, prompt: str, response: str | None = "An answer.", **extra: object) -> dict:
    messages = extra.pop(
        "messages", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    )
    return {
        "request_id": f"r{i:04d}",
        "timestamp": f"2025-05-01T00:00:{i % 60:02d}Z",
        "application": "support-assistant",
        "model_name": "m",
        "messages": messages,
        "response": response,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 1.0,
        "cost_usd": 0.0,
        **extra,
    }


def frame_of(*records: dict) -> pd.DataFrame:
    return frame_from_records(list(records))


def test_frame_splits_system_history_and_prompt() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    row = frame_of(record(1, "", messages=messages, feedback={"score": 1})).iloc[0]
    assert row["system"] == "S", "the leading system message is the system prompt"
    assert row["prompt"] == "second", "the prompt is the last user turn"
    assert row["history"] == '[{"role":"user","content":"first"},{"role":"assistant","content":"reply"}]'
    assert row["roles"] == "system,user,assistant,user", "roles keep the original order"
    assert row["feedback"] == 1.0, "feedback is the score as a float"


def test_normalise_text_folds_unicode_whitespace_and_invisible_characters() -> None:
    texts = pd.Series(["  How\u00a0do I\t\texport\n my notes?\u200b ", "ﬁle Ｑuillbox", None], dtype=object)
    assert normalise_text(texts).tolist() == ["How do I export my notes?", "file Quillbox", None]


def test_normalise_text_equals_the_plain_pipeline_on_ascii_and_unicode_text() -> None:
    """The fast path (NFKC only on non-ASCII rows, only whitespace runs that change) gives the
    same text as NFKC, drop invisibles, collapse every `\\s+`, trim, on every row."""
    import itertools

    import pyarrow as pa
    import pyarrow.compute as pc

    pieces = ["a", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\f", "\u00a0", "\u200b", "\u2003", "ﬁ", "é", "b"]
    texts = ["".join(combo) for combo in itertools.product(pieces, repeat=3)] + ["", "   ", None]
    plain = pa.array(texts, type=pa.large_string())
    plain = pc.utf8_normalize(plain, form="NFKC")
    plain = pc.replace_substring_regex(plain, pattern="[\u200b\u200c\u200d\u2060\ufeff]", replacement="")
    plain = pc.replace_substring_regex(plain, pattern=r"\s+", replacement=" ")
    expected = pc.utf8_trim_whitespace(plain).to_pylist()

    assert normalise_text(pd.Series(texts, dtype=object)).tolist() == expected
    ascii_only = [t for t in texts if t is None or t.isascii()]
    assert normalise_text(pd.Series(ascii_only, dtype=object)).tolist() == [
        e for t, e in zip(texts, expected, strict=True) if t is None or t.isascii()
    ]


def test_normalise_drops_bad_role_order_and_empty_turns_with_reasons() -> None:
    frame = frame_of(
        record(1, "fine question"),
        record(2, "   \n"),
        record(3, "ok", response="  "),
        record(4, "x", messages=[{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]),
        record(5, "failed but kept here", response=None, status="error"),
    )
    result = normalise(frame)
    assert result.kept["request_id"].tolist() == ["r0001", "r0005"], "only well-formed records stay"
    assert result.dropped == {"role_order": ["r0004"], "empty_prompt": ["r0002"], "empty_response": ["r0003"]}


def test_strip_filler_cuts_whole_pleasantries_next_to_other_text_and_drops_nothing() -> None:
    frame = frame_of(
        record(1, "q", response="Sure! Pro costs $8 per month."),
        record(2, "q", response="happy to help. Export from the note menu. Hope that helps!"),
        record(3, "q", response="Sure!"),  # nothing but the pleasantry: kept as it is
        record(4, "q", response="Surely not. Sure! Hope that helps! Thanks"),  # not at the edges
        record(5, "q", response=None, status="error"),
    )
    result = strip_filler(frame, ["Sure!", "Happy to help."], ["Hope that helps!"])
    assert result.kept["response"].tolist() == [
        "Pro costs $8 per month.",
        "Export from the note menu.",
        "Sure!",
        "Surely not. Sure! Hope that helps! Thanks",
        None,
    ]
    assert result.dropped == {} and result.stats == {"stripped": 2}
    assert strip_filler(frame, [], []).kept is frame, "no phrases configured: the frame passes untouched"


def test_failed_requests_are_dropped() -> None:
    frame = frame_of(record(1, "q"), record(2, "q", response=None, status="error"))
    assert failed_requests(frame).dropped == {"failed_request": ["r0002"]}


def test_length_and_language_rules() -> None:
    frame = frame_of(
        record(1, "How do I share a notebook with my team?"),
        record(2, "hi"),
        record(3, "x" * 50, response="y" * 5000),
        record(4, "Как экспортировать мои заметки в PDF?"),
        record(5, "¿Cómo exporto mis notas a PDF?"),
        record(6, "Как экспортировать? " * 250),
    )
    result = length_and_language(frame, 3, 4000, 2, 4000, 0.5)
    assert result.kept["request_id"].tolist() == ["r0001", "r0005"], "Spanish with accents is Latin script"
    assert result.dropped == {
        "prompt_too_short": ["r0002"],
        "prompt_too_long": ["r0006"],  # its length, the first reason, not its script
        "response_too_long": ["r0003"],
        "not_english": ["r0004"],
    }


def test_every_planted_injection_matches_a_pattern() -> None:
    frame = frame_of(*(record(i, text) for i, text in enumerate(INJECTION_PROMPTS)))
    result = safety_patterns(frame)
    assert result.kept.empty, f"not caught by a pattern: {result.kept['prompt'].tolist()}"


def test_no_knowledge_base_question_or_answer_trips_a_safety_filter() -> None:
    facts = load_knowledge()
    rows = [
        record(i, question, response=fact.answer)
        for i, (fact, question) in enumerate((fact, q) for fact in facts for q in fact.paraphrases)
    ]
    result = safety_patterns(frame_of(*rows))
    prompts = frame_of(*rows).set_index("request_id")["prompt"]
    flagged = {reason: prompts.loc[ids].tolist() for reason, ids in result.dropped.items()}
    assert not result.dropped, f"false flags on support questions: {flagged}"


def test_toxicity_in_prompt_or_answer_is_dropped() -> None:
    frame = frame_of(
        record(1, "this app is shit, how do I cancel?"),
        record(2, "How do I cancel?", response="Figure it out, idiot."),
        record(3, "How do I cancel my shitake mushroom subscription?"),
    )
    assert safety_patterns(frame).dropped == {"toxicity": ["r0001", "r0002"]}, "whole words only"


def test_injection_similarity_uses_embeddings_of_distinct_prompts() -> None:
    calls: list[int] = []
    embedder = HashingEmbedder()

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return embedder(texts)

    attack = INJECTION_SEEDS[0]
    frame = frame_of(record(1, attack), record(2, attack), record(3, "How do I export my notes to PDF?"))
    result = injection_similarity(frame, embed, threshold=0.8)
    assert result.dropped == {"injection_similar": ["r0001", "r0002"]}
    assert calls == [len(INJECTION_SEEDS), 2], "seeds once, then each distinct prompt once"
    assert result.stats == {"embedded": 2}


def test_quality_drops_rated_down_and_optionally_unrated() -> None:
    frame = frame_of(
        record(1, "q", feedback={"score": 1}),
        record(2, "q", feedback={"score": -1}),
        record(3, "q"),
        record(4, "q", feedback={"score": 0}),
    )
    assert quality(frame, keep_unrated=True).dropped == {"rated_down": ["r0002"]}
    assert quality(frame, keep_unrated=False).dropped == {"rated_down": ["r0002"], "unrated": ["r0003"]}


def test_funnel_chains_steps_and_balances() -> None:
    frame = frame_of(record(1, "q"), record(2, "q", response=None, status="error"), record(3, "hi"))
    funnel = Funnel(n_in=len(frame))
    kept = funnel.add(failed_requests(frame))
    funnel.add(length_and_language(kept, 3, 100, 0, 100, 0.5))
    funnel.check()
    assert funnel.n_out == 0 and funnel.dropped_by_reason() == {
        "failed.failed_request": 1,
        "length_language.prompt_too_short": 2,
    }


def test_funnel_rejects_a_step_that_loses_records() -> None:
    frame = frame_of(record(1, "q"), record(2, "q"))
    funnel = Funnel(n_in=3)
    with pytest.raises(FunnelMismatch, match="received 3"):
        funnel.add(StepResult("lossy", frame))


def test_read_partitions_matches_the_per_record_path_on_every_shape(tmp_path: Path) -> None:
    import orjson

    from tasks.curate.frame import read_partitions

    multi = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    records = [
        record(1, "plain"),
        record(2, "no system", messages=[{"role": "user", "content": "no system"}], feedback={"score": -1}),
        record(3, "", messages=multi, feedback={"score": 1, "comment": "great"}),
        record(4, "", messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "t"}]),
        record(5, "", messages=[{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]),
        record(6, "failed", response=None, status="error"),
    ]
    (tmp_path / "part-a.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records[:3]) + b"\n")
    (tmp_path / "part-b.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records[3:]) + b"\n")
    fast = read_partitions([tmp_path / "part-a.jsonl", tmp_path / "part-b.jsonl"])
    expected = frame_of(*records)
    pd.testing.assert_frame_equal(fast, expected)
