"""A model on the eval items and probes, and two such runs through the gate (tiny random LLM)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest

from flywheel.settings import EvaluateParams, PriceParams
from tasks.evaluate.gate import ITEM_ID, OPS_COST_PER_QUERY, OPS_LATENCY_P95
from tasks.evaluate.run_eval import EvalItem, ModelEval, evaluate_model, gate, load_eval_items, ops_figures
from tasks.evaluate.safety import load_suite
from tests.helpers.tiny_llm import build_tiny_chat_model

ITEMS = [
    EvalItem("q1", "How much is Pro?", "Pro costs $8 per month.", ("$8",)),
    EvalItem("q2", "Can I export to PDF?", "Yes, from the note menu.", ("PDF",)),
]


def test_load_eval_items_reads_the_demo_format_and_rejects_repeated_ids(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "Q?", "reference": "R.", "key_tokens": ["R"], "suite": "s", "version": "1"}
    ]
    path = tmp_path / "eval.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    assert load_eval_items(path) == [EvalItem("a", "Q?", "R.", ("R",))]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows * 2))
    with pytest.raises(ValueError, match="repeat"):
        load_eval_items(path)


def test_evaluate_model_scores_every_item_and_probe() -> None:
    probes = load_suite()[:3]
    result = evaluate_model(
        build_tiny_chat_model(),
        ITEMS,
        probes,
        "Be brief.",
        max_new_tokens=4,
        price=PriceParams(input=1.0, output=2.0),
    )
    assert result.scores[ITEM_ID].tolist() == ["q1", "q2"], "one row per item, in order"
    assert {"rougeL", "bleu", "fact_hit", "answer", "latency_ms"} <= set(result.scores.columns)
    assert len(result.probes) == 3 and result.probes["resisted"].dtype == bool, "every probe judged"
    assert result.ops[OPS_LATENCY_P95] > 0, "latency measured"
    assert 0.0 <= result.safety <= 1.0


def test_ops_figures_price_tokens_per_million() -> None:
    answers = pd.DataFrame(
        {"latency_ms": [10.0, 20.0], "prompt_tokens": [100, 300], "completion_tokens": [10, 30]}
    )
    ops = ops_figures(answers, PriceParams(input=1.0, output=2.0))
    assert ops[OPS_COST_PER_QUERY] == pytest.approx((200 * 1.0 + 20 * 2.0) / 1e6), "mean cost per query"


def _eval(scores: list[float], safety: list[bool]) -> ModelEval:
    frame = pd.DataFrame({ITEM_ID: [f"q{i}" for i in range(len(scores))], "rougeL": scores})
    ops = {OPS_LATENCY_P95: 100.0, OPS_COST_PER_QUERY: 1e-5}
    return ModelEval(frame, ops, pd.DataFrame({"resisted": safety}))


def test_gate_passes_a_better_candidate_and_names_what_fails_a_worse_one() -> None:
    params = EvaluateParams(bootstrap_samples=500)
    base = _eval([0.2] * 30, [True] * 10)
    better = _eval([0.7] * 30, [True] * 10)
    leaky = _eval([0.7] * 30, [True] * 5 + [False] * 5)
    assert gate(better, base, params).passed, "a clearly better, equally safe candidate passes"
    assert gate(leaky, base, params).failed_rules == ["safety"], "a less safe candidate fails on safety"
    assert "superiority" in gate(base, better, params).failed_rules, "a worse candidate fails superiority"


def test_model_card_states_use_data_scores_safety_and_limits() -> None:
    from tasks.evaluate.model_card import dtype_note, model_card

    decision = gate(
        _eval([0.7] * 30, [True] * 10), _eval([0.2] * 30, [True] * 10), EvaluateParams(bootstrap_samples=200)
    )
    card = model_card(
        "flywheel-support v3",
        "SmolLM2-135M-Instruct",
        "support-assistant",
        {"data/curated/train.jsonl": "abc123"},
        {"steps": 260},
        decision,
        (1.0, 0.9),
        ("no LLM-judge metrics (no judge endpoint configured)", dtype_note("auto", "bfloat16")),
    )
    expected = (
        "## Intended use", "`data/curated/train.jsonl` | `abc123`", "gate PASSED", "rougeL", "Win rate",
        "candidate 100%, baseline 90%", "## Limitations", "no LLM-judge metrics",
        "answers generated in bfloat16 (model.dtype: auto on this machine)",
    )  # fmt: skip
    for part in expected:
        assert part in card, f"the model card should contain {part!r}:\n{card}"
