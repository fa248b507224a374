"""Eval metrics: local `evaluate` modules offline, equal to rouge_score/sacrebleu; per-item scoring; ragas."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from flywheel.demo.simulated_user import HashingEmbedder
from tasks.evaluate.metrics import METRIC_NAMES, metric_path
from tasks.evaluate.scoring import (
    NO_JUDGE_NOTE,
    SCORE_COLUMNS,
    ScoringInputError,
    fact_hit,
    judge_available,
    ragas_scores,
    score_items,
)

PREDICTIONS = [
    "The capital of France is Paris.",
    "Quillbox Pro costs $8 per user per month.",
    "Press Ctrl+K to open the command palette.",
    "I'm not sure, please contact support.",
    "",
]
REFERENCES = [
    "Paris is the capital of France.",
    "Quillbox Pro costs $8 per user per month, billed annually.",
    "Press Ctrl+K to open the command palette.",
    "Shared workspaces hold up to 50 members.",
    "Offline mode is available on desktop.",
]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _load(target: str) -> Any:
    import evaluate

    return evaluate.load(target)


PER_ITEM_KEY = {"rouge_l": "rougeL_per_item", "bleu": "bleu_per_item", "exact_match": "exact_match_per_item"}


@pytest.mark.parametrize("name", METRIC_NAMES)
@pytest.mark.parametrize("by", ["file", "folder"])
def test_local_metric_loads_by_path_offline(name: str, by: str, no_network: None) -> None:
    # given the hub unreachable (HF_HUB_OFFLINE=1, sockets refused)
    target = metric_path(name) if by == "file" else metric_path(name).parent
    # when the local module is loaded by path and computed
    result = _load(str(target)).compute(predictions=PREDICTIONS[:2], references=REFERENCES[:2])
    # then it loads and returns a per-item list next to the aggregate
    assert len(result[PER_ITEM_KEY[name]]) == 2, f"{name} by {by}: {result}"


def test_rouge_l_matches_rouge_scorer(no_network: None) -> None:
    # given rouge_score's own RougeL scorer on the same pairs
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [
        scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    # when the local module computes them
    result = _load(str(metric_path("rouge_l"))).compute(predictions=PREDICTIONS, references=REFERENCES)
    # then per item and mean agree exactly
    assert result["rougeL_per_item"] == pytest.approx(expected, abs=1e-12), (
        "per-item ROUGE-L differs from RougeScorer"
    )
    assert result["rougeL"] == pytest.approx(float(np.mean(expected)), abs=1e-12), "mean ROUGE-L differs"


def test_bleu_matches_sacrebleu(no_network: None) -> None:
    # given sacrebleu's sentence and corpus BLEU on the same pairs
    sentence = [
        sacrebleu.sentence_bleu(p, [r]).score / 100 for p, r in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    corpus = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100
    # when the local module computes them
    result = _load(str(metric_path("bleu"))).compute(predictions=PREDICTIONS, references=REFERENCES)
    # then both agree on the 0-1 scale
    assert result["bleu_per_item"] == pytest.approx(sentence, abs=1e-12), (
        "sentence BLEU differs from sacrebleu"
    )
    assert result["bleu"] == pytest.approx(corpus, abs=1e-12), "corpus BLEU differs from sacrebleu"
    assert 0.0 < result["bleu"] < 1.0, f"corpus BLEU should be on a 0-1 scale, got {result['bleu']}"


@pytest.mark.parametrize(
    ("prediction", "reference", "kwargs", "expected"),
    [
        ("Paris", "Paris", {}, 1),
        ("  paris \n", "Paris", {}, 1),
        ("paris", "Paris", {"ignore_case": False}, 0),
        ("$8", "$80", {}, 0),
        ("Paris.", "Paris", {}, 0),
        ("Paris.", "Paris", {"ignore_punctuation": True}, 1),
    ],
)
def test_exact_match_normalisation(
    prediction: str, reference: str, kwargs: dict[str, bool], expected: int
) -> None:
    # when one pair is compared with the given options
    result = _load(str(metric_path("exact_match"))).compute(
        predictions=[prediction], references=[reference], **kwargs
    )
    # then the match is as expected
    assert result["exact_match_per_item"] == [expected], f"{prediction!r} vs {reference!r} with {kwargs}"


def test_unknown_metric_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown local metric"):
        metric_path("bertscore")


@pytest.mark.parametrize(
    ("answer", "keys", "expected"),
    [
        ("Pro costs $8 per month.", ["$8"], True),
        ("Pro costs $80 per month.", ["$8"], False),
        ("Up to 1,000 notes and 5 GB.", ["1000", "5 gb"], True),
        ("Up to 1000 notes.", ["1000", "5 gb"], False),
        ("Press CTRL+K.", ["ctrl+k"], True),
        ("Anything at all.", [], None),
    ],
)
def test_fact_hit_matches_whole_key_tokens(answer: str, keys: list[str], expected: bool | None) -> None:
    assert fact_hit(answer, keys) is expected, f"fact_hit({answer!r}, {keys}) should be {expected}"


def test_score_items_columns_and_values() -> None:
    # given answers, references, key tokens and a cheap deterministic embedder
    keys = [["paris"], ["$8"], ["ctrl+k"], ["50"], []]
    # when scored
    frame = score_items(PREDICTIONS, REFERENCES, keys, HashingEmbedder())
    # then every column is there, one row per item, and values agree with the libraries
    assert list(frame.columns) == list(SCORE_COLUMNS), f"columns: {list(frame.columns)}"
    assert len(frame) == len(PREDICTIONS), "one row per prediction"
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected_rouge = [
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    assert frame["rougeL"].tolist() == pytest.approx(expected_rouge), "rougeL per item"
    expected_bleu = [
        min(sacrebleu.sentence_bleu(p, [r]).score / 100, 1.0)
        for p, r in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    assert frame["bleu"].tolist() == pytest.approx(expected_bleu), "bleu per item, clipped to 1"
    assert frame["bleu"].between(0, 1).all(), "bleu is on a 0-1 scale"
    assert frame["exact_match"].tolist() == [0, 0, 1, 0, 0], "only the identical pair matches"
    assert frame["fact_hit"].tolist() == [True, True, True, False, pd.NA], "fact hits"
    assert frame.loc[2, "semantic_similarity"] == pytest.approx(1.0), "identical texts have cosine 1"
    assert frame["semantic_similarity"].between(-1.0, 1.0 + 1e-6).all(), "cosines are in [-1, 1]"


def test_score_items_without_keys_or_embedder() -> None:
    # when scored with neither key tokens nor an embedder
    frame = score_items(PREDICTIONS[:2], REFERENCES[:2], None, None)
    # then those columns are there but empty
    assert frame["fact_hit"].isna().all(), "fact_hit is <NA> without key tokens"
    assert frame["semantic_similarity"].isna().all(), "semantic_similarity is NaN without an embedder"


def test_score_items_on_no_items() -> None:
    frame = score_items([], [], None, None)
    assert frame.empty and list(frame.columns) == list(SCORE_COLUMNS), f"empty frame with columns: {frame}"


@pytest.mark.parametrize(
    ("predictions", "references", "keys", "message"),
    [
        (["a", "b"], ["a"], None, "2 predictions but 1 references"),
        (["a"], ["a"], [["x"], ["y"]], "2 key_tokens for 1 predictions"),
        ("abc", ["a", "b", "c"], None, "not one string"),
    ],
)
def test_score_items_refuses_misaligned_input(
    predictions: Any, references: list[str], keys: list[list[str]] | None, message: str
) -> None:
    with pytest.raises(ScoringInputError, match=message):
        score_items(predictions, references, keys, None)


def test_ragas_scores_offline_without_judge() -> None:
    # given no judge endpoint
    # when ragas scores the pairs with the bundled MiniLM
    result = ragas_scores(PREDICTIONS[:3], REFERENCES[:3])
    # then the non-LLM metrics agree with ours, the identical pair is similar, and the notes say no judge
    ours = score_items(PREDICTIONS[:3], REFERENCES[:3])
    assert result.frame["ragas_rouge"].tolist() == pytest.approx(ours["rougeL"].tolist()), "ragas RougeScore"
    assert result.frame["ragas_bleu"].tolist() == pytest.approx(ours["bleu"].tolist()), "ragas BleuScore"
    assert result.frame["ragas_string_similarity"].between(0, 1).all(), "string similarity in [0, 1]"
    assert result.frame.loc[2, "ragas_semantic_similarity"] == pytest.approx(1.0, abs=1e-4), "identical pair"
    assert result.frame.loc[0, "ragas_semantic_similarity"] > 0.8, "paraphrase pair is similar"
    expected = NO_JUDGE_NOTE.format(why="no judge endpoint configured")
    assert expected in result.notes, f"notes must say no LLM-judge metrics ran: {result.notes}"


class _Answer:
    def __init__(self, ok: bool) -> None:
        self.is_success = ok


@pytest.mark.parametrize(("url", "reply", "expected"), [(None, None, False), ("  ", None, False)])
def test_judge_unavailable_without_url(url: str | None, reply: None, expected: bool) -> None:
    assert judge_available(url) is expected, f"judge_available({url!r})"


@pytest.mark.parametrize(("ok", "expected"), [(True, True), (False, False)])
def test_judge_available_follows_the_models_endpoint(
    monkeypatch: pytest.MonkeyPatch, ok: bool, expected: bool
) -> None:
    import httpx

    seen: list[str] = []

    def fake_get(url: str, timeout: float) -> _Answer:
        seen.append(url)
        return _Answer(ok)

    monkeypatch.setattr(httpx, "get", fake_get)
    assert judge_available("http://judge.test/v1/") is expected, f"judge answering ok={ok}"
    assert seen == ["http://judge.test/v1/models"], f"asked {seen}"


def test_judge_unreachable_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    def refuse(url: str, timeout: float) -> None:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(httpx, "get", refuse)
    assert judge_available("http://127.0.0.1:9/v1") is False, "a refused connection means no judge"
