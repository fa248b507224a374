"""Benchmark: LoRA fine-tuning of SmolLM2 on demo-like ChatML records (speed and overhead).

    python bench/bench_train.py [--steps 20] [--every 10] [--threads 2] [--json]

Builds ChatML records from the demo knowledge base (every training-pool
paraphrase with its fact's answer, under the configured system prompt; one
in ten held out as validation records), loads the configured model and runs
`train_lora` with the project's `train` params for `--steps` steps,
evaluating and checkpointing every `--every` steps so their cost is measured.
Prints tokens/s, seconds per step, the share of wall time spent outside the
training steps in this run, and that share projected onto a full run with
the project's own `max_steps`, `eval_every` and `checkpoint_every`.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def demo_records(
    system_prompt: str, eval_paraphrases: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) ChatML records from the demo facts' training paraphrases."""
    import random

    from flywheel.demo.knowledge import load_knowledge, split_questions

    facts = {fact.id: fact for fact in load_knowledge()}
    pool, _held_out = split_questions(tuple(facts.values()), eval_paraphrases)
    records = [
        {
            "id": question.id,
            "messages": [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": question.text},
                {"role": "assistant", "content": facts[question.fact_id].answer},
            ],
        }
        for question in pool
    ]
    random.Random(seed).shuffle(records)
    n_val = max(1, len(records) // 10)
    return records[n_val:], records[:n_val]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps to run")
    parser.add_argument("--every", type=int, default=10, help="eval and checkpoint interval in this run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: params)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from flywheel.settings import apply_offline_environ, load_params, override

    apply_offline_environ()
    from flywheel.runtime.llm import load_chat_model
    from tasks.train.sft import train_lora

    params = load_params()
    model_params = override(params.model, threads=args.threads)
    train_params = override(
        params.train, max_steps=args.steps, eval_every=args.every, checkpoint_every=args.every
    )
    train, val = demo_records(model_params.system_prompt, params.demo.eval_paraphrases, params.demo.seed)

    load_started = time.perf_counter()
    chat = load_chat_model(model_params)
    load_seconds = time.perf_counter() - load_started
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        # The cached model is trained in place; train_lora removes the LoRA layers again at the end.
        result = train_lora(
            chat.model, chat.tokenizer, train, val, train_params, Path(scratch), device=args.device
        )

    step_seconds = result.loop_seconds / max(1, result.steps)
    evals = len(result.val_losses)
    checkpoints = result.steps // args.every - (1 if result.steps % args.every == 0 else 0)
    per_eval = result.overhead_seconds["eval"] / max(1, evals)
    per_checkpoint = result.overhead_seconds["checkpoint"] / max(1, checkpoints)
    full = params.train
    full_steps = full.max_steps
    full_overhead = (
        result.overhead_seconds["setup"]
        + result.overhead_seconds["save"]
        + per_eval * (full_steps // full.eval_every + (1 if full_steps % full.eval_every else 0))
        + per_checkpoint * ((full_steps - 1) // full.checkpoint_every)
    )
    full_seconds = full_overhead + step_seconds * full_steps
    figures = {
        "device": result.device,
        "train_records": len(train),
        "val_records": len(val),
        "model_load_s": round(load_seconds, 2),
        "steps": result.steps,
        "batch_size": train_params.batch_size,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "seconds_per_step": round(step_seconds, 3),
        "first_loss": round(result.train_losses[0], 4),
        "last_loss": round(result.train_losses[-1], 4),
        "median_loss_last_5": round(statistics.median(result.train_losses[-5:]), 4),
        "train_losses": [round(loss, 4) for loss in result.train_losses],
        "val_losses": [(step, round(loss, 4)) for step, loss in result.val_losses],
        "wall_s": round(result.seconds, 2),
        "overhead_s": {k: round(v, 3) for k, v in result.overhead_seconds.items()},
        "overhead_share": round(result.overhead_share, 4),
        "seconds_per_eval": round(per_eval, 3),
        "seconds_per_checkpoint": round(per_checkpoint, 3),
        "full_run_steps": full_steps,
        "full_run_projected_s": round(full_seconds, 1),
        "full_run_projected_overhead_share": round(full_overhead / full_seconds, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>36}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
