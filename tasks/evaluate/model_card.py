"""The model card of a candidate: what it is for, what it learned from, how it scored, where it fails.

Rendered as markdown and logged next to the candidate's version, so the
reviewer who approves a promotion in the MLflow UI reads it there.
"""

from __future__ import annotations

from collections.abc import Mapping

from tasks.evaluate.gate import GateDecision


def dtype_note(requested: str, resolved: str) -> str:
    """The card's line on the dtype the answers were generated in (`model.dtype` and what it meant here).

    "auto" is bfloat16 on a CPU with hardware bf16 and float32 elsewhere, and greedy
    answers can differ between the two: a reader comparing cards across machines needs it.
    """
    if requested == resolved:
        return f"answers generated in {resolved} (model.dtype)"
    return (
        f"answers generated in {resolved} (model.dtype: {requested} on this machine); "
        "greedy answers in another dtype can differ"
    )


def model_card(
    name: str,
    base_model: str,
    application: str,
    data: Mapping[str, str],
    train_summary: Mapping[str, object],
    decision: GateDecision,
    safety: tuple[float, float],
    notes: tuple[str, ...] = (),
) -> str:
    """The card as markdown.

    Args:
        name: the registered model and the candidate's description (e.g. "flywheel-support, LoRA r16").
        base_model: what the adapter sits on.
        application: the served application.
        data: dataset path -> DVC md5 the candidate was trained and judged on.
        train_summary: training figures worth a reviewer's glance (steps, final losses, wall time).
        decision: the gate's decision against the baseline.
        safety: (candidate, baseline) share of safety probes resisted.
        notes: what the evaluation left out (e.g. no LLM-judge metrics offline).
    """
    verdict = "PASSED" if decision.passed else f"FAILED ({', '.join(decision.failed_rules)})"
    lines = [
        f"# Model card: {name}",
        "",
        "## Intended use",
        f"Answers customer questions for `{application}` through the Flywheel gateway, one or two short",
        "factual sentences grounded in the product's documented facts. Not for advice outside the",
        "product, decisions about people, or anything the support team would not answer.",
        "",
        "## Model",
        f"LoRA adapter on `{base_model}`.",
        "",
        "## Data",
        "| dataset | DVC md5 |",
        "|---|---|",
        *(f"| `{path}` | `{md5}` |" for path, md5 in data.items()),
        "",
        "## Training",
        *(f"- {key}: {value}" for key, value in train_summary.items()),
        "",
        f"## Evaluation: gate {verdict}",
        f"{decision.n_items} held-out items, paired with the baseline; "
        f"{decision.confidence:.0%} bootstrap intervals.",
        "",
        "| metric | candidate - baseline |",
        "|---|---|",
        *(f"| {metric} | {interval} |" for metric, interval in decision.intervals.items()),
        "",
        f"Win rate on `{decision.primary_metric}`: {decision.win_rate}",
        "",
        "## Safety",
        f"Safety probes resisted: candidate {safety[0]:.0%}, baseline {safety[1]:.0%} (rule-based checks:",
        "system-prompt leaks, PII produced, injected instructions followed).",
        "",
        "## Limitations",
        "- Knows only what its training data held; facts that changed since are answered from memory.",
        "- Scored by reference overlap and key-token checks, which miss paraphrased but correct answers",
        "  and reward fluent wrong ones that reuse the reference's words.",
        "- Safety checks are rules, not a red team; a new attack style can pass them.",
        *(f"- {note}" for note in notes),
    ]
    return "\n".join(lines) + "\n"
