"""One model on the eval items and the safety probes: answers, per-item scores, ops figures.

The gate compares two of these (candidate and champion, or the base model when
there is no champion yet) answering exactly the same items with the same
system prompt and generation settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from flywheel.runtime.llm import ChatModel
from flywheel.settings import EvaluateParams, PriceParams
from tasks.evaluate.gate import ITEM_ID, OPS_COST_PER_QUERY, OPS_LATENCY_P95, GateDecision, decide

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class EvalItem:
    """One eval question with its reference answer and the key tokens of its fact."""

    item_id: str
    question: str
    reference: str
    key_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelEval:
    """What one model did on the suite: answers with their scores, ops figures, probe results."""

    scores: pd.DataFrame  # item_id, answer, latency_ms, completion_tokens, and one column per metric
    ops: dict[str, float]
    probes: pd.DataFrame  # id, category, resisted, reasons, answer

    @property
    def safety(self) -> float:
        """Share of safety probes resisted (1.0 when no probes ran)."""
        return float(self.probes["resisted"].mean()) if len(self.probes) else 1.0


def load_eval_items(path: Path) -> list[EvalItem]:
    """Eval items from JSONL: `id`, `question`, `reference`, optional `key_tokens` (as demo eval.jsonl)."""
    items = []
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                row = orjson.loads(line)
                items.append(
                    EvalItem(row["id"], row["question"], row["reference"], tuple(row.get("key_tokens", ())))
                )
    if len({item.item_id for item in items}) != len(items):
        raise ValueError(f"eval item ids repeat in {path}")
    return items


def _chat(system_prompt: str, question: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*turns, {"role": "user", "content": question}]


def answer(
    chat: ChatModel, questions: Sequence[str], system_prompt: str, max_new_tokens: int, batch_size: int = 8
) -> pd.DataFrame:
    """Greedy answers to `questions`, with latency and tokens per answer, in input order."""
    generations = chat.generate_batch(
        [_chat(system_prompt, q) for q in questions], max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return pd.DataFrame(
        {
            "answer": [g.text for g in generations],
            "latency_ms": [g.latency_s * 1000.0 for g in generations],
            "prompt_tokens": [g.prompt_tokens for g in generations],
            "completion_tokens": [g.completion_tokens for g in generations],
        }
    )


def ops_figures(answers: pd.DataFrame, price: PriceParams) -> dict[str, float]:
    """p95 latency and mean cost per query (USD, from the per-1M-token price table)."""
    cost = (answers["prompt_tokens"] * price.input + answers["completion_tokens"] * price.output) / 1e6
    return {
        OPS_LATENCY_P95: float(np.percentile(answers["latency_ms"], 95)) if len(answers) else 0.0,
        OPS_COST_PER_QUERY: float(cost.mean()) if len(answers) else 0.0,
        "mean_output_tokens": float(answers["completion_tokens"].mean()) if len(answers) else 0.0,
        "latency_p50_ms": float(np.percentile(answers["latency_ms"], 50)) if len(answers) else 0.0,
    }


def evaluate_model(
    chat: ChatModel,
    items: Sequence[EvalItem],
    probes: Sequence[dict[str, Any]],
    system_prompt: str,
    max_new_tokens: int,
    price: PriceParams,
    embed: Embed | None = None,
) -> ModelEval:
    """Answer every eval item and safety probe; score the answers."""
    from tasks.evaluate.safety import score_probe
    from tasks.evaluate.scoring import score_items

    answers = answer(chat, [item.question for item in items], system_prompt, max_new_tokens)
    scores = score_items(
        answers["answer"].tolist(),
        [item.reference for item in items],
        [item.key_tokens for item in items],
        embed,
    )
    scores.insert(0, ITEM_ID, [item.item_id for item in items])
    scores = pd.concat([scores, answers], axis=1)
    probe_answers = answer(chat, [p["prompt"] for p in probes], system_prompt, max_new_tokens)
    results = [
        {**score_probe(probe, text, system_prompt), "answer": text}
        for probe, text in zip(probes, probe_answers["answer"], strict=True)
    ]
    probe_frame = pd.DataFrame(results, columns=["id", "category", "resisted", "reasons", "answer"])
    return ModelEval(scores, ops_figures(answers, price), probe_frame)


def gate(candidate: ModelEval, baseline: ModelEval, params: EvaluateParams) -> GateDecision:
    """The gate's decision for `candidate` against `baseline` on the same items and probes."""
    return decide(
        candidate.scores,
        baseline.scores,
        candidate.ops,
        baseline.ops,
        (candidate.safety, baseline.safety),
        params,
    )
