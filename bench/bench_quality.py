"""Benchmark: what one retrain buys on the demo workload, measured the way the gate measures it.

    python bench/bench_quality.py [--set learning_rate=0.003 ...] [--model-set dtype=bfloat16 ...]
                                  [--data DIR] [--run-dir DIR] [--max-items N] [--json]

Builds the demo data in DIR (a temporary folder by default; a DIR that already
holds `curated/train.jsonl` is reused): the demo workload, one harvest of its
history, one curation, with the functions the flows call (no Prefect, no
servers). Then fine-tunes a LoRA adapter with the project's `train` params
(each `--set key=value` overrides one, the value read as JSON), and lets the
base model and the candidate answer the held-out eval suite with the served
system prompt (loaded with the `model` params, each `--model-set key=value`
overriding one: `dtype=bfloat16` measures the bf16 serving path; training
always uses the float32 base). Scoring and decision are the gate's own code:
per-item ROUGE-L and fact hit, paired bootstrap CIs of the gains, the win rate. Also prints the
fact hit by how many paraphrases of the fact reached the train split, which is
what limits it. Safety probes are not run here (the gate runs them).

About 11-15 minutes on 2 cores (training 7.5-11, answering about 3-4).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a train param (JSON value)"
    )
    parser.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model param for answering (JSON value)",
    )
    parser.add_argument("--data", type=Path, default=None, help="data dir to build or reuse (default: temp)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="training run dir to keep (default: temp); a finished run there resumes at its last step",
    )
    parser.add_argument("--max-items", type=int, default=None, help="eval only the first N items")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return parser.parse_args(argv)


def _overrides(pairs: list[str], option: str = "--set") -> dict[str, Any]:
    updates: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{option} wants KEY=VALUE, got {pair!r}")
        try:
            updates[key] = json.loads(value)
        except json.JSONDecodeError:
            updates[key] = value
    return updates


def build_data(data_dir: Path) -> dict[str, int]:
    """Seed, harvest and curate the demo into `data_dir`; returns the curated split sizes."""
    from flywheel.settings import load_params
    from tasks.curate.run import CurationPaths, minilm_embed, run_curation
    from tasks.demo.seed import write_workload
    from tasks.harvest.harvest import run_harvest
    from tasks.harvest.sources import FilesSource

    params = load_params()
    write_workload(params.demo, params.project.application, data_dir, params.harvest)
    source = FilesSource(str(data_dir / params.harvest.incoming_dir))
    run_harvest(source, data_dir / params.harvest.raw_dir, data_dir / "state")
    curate = params.curate
    paths = CurationPaths(
        raw_dir=data_dir / params.harvest.raw_dir,
        out_dir=data_dir / curate.curated_dir,
        docs_dir=data_dir / "data-docs",
        protected=tuple(data_dir / suite for suite in curate.protected_suites),
        embedding_cache=data_dir / "embeddings.sqlite",
    )
    return dict(run_curation(paths, curate, minilm_embed(paths.embedding_cache)).metrics["splits"])


def paraphrases_in_train(train_records: list[dict[str, Any]]) -> Counter[str]:
    """How many training questions ask each fact (a question contains a known paraphrase)."""
    from flywheel.demo.knowledge import load_knowledge

    known = [(question.lower(), fact.id) for fact in load_knowledge() for question in fact.paraphrases]
    counts: Counter[str] = Counter()
    for record in train_records:
        asked = str(record["messages"][-2]["content"]).lower()
        fact = next((fact_id for question, fact_id in known if question in asked), None)
        if fact is not None:
            counts[fact] += 1
    return counts


def _triple(interval: Any) -> list[float]:
    """An interval as [estimate, low, high], rounded."""
    return [round(interval.estimate, 4), round(interval.low, 4), round(interval.high, 4)]


def _band(count: int) -> str:
    return "1-2" if count <= 2 else ("3" if count == 3 else "4+")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from flywheel.settings import apply_offline_environ, load_params, override

    apply_offline_environ()
    from flywheel.runtime.llm import load_chat_model
    from tasks.evaluate.run_eval import evaluate_model, gate, load_eval_items
    from tasks.train.run import TRAIN_FILE, fine_tune, read_records

    params = load_params()
    train_overrides = _overrides(args.set)
    model_overrides = _overrides(args.model_set, "--model-set")
    train_params = override(params.train, **train_overrides)
    model_params = override(params.model, **model_overrides)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        data_dir = args.data or Path(scratch) / "data"
        curated = data_dir / params.curate.curated_dir
        started = time.perf_counter()
        if not (curated / TRAIN_FILE).is_file():
            print(f"building the demo data in {data_dir} ...", file=sys.stderr, flush=True)
            build_data(data_dir)
        data_seconds = time.perf_counter() - started

        def progress(info: Any) -> None:
            if info.step % 10 == 0 or info.val_loss is not None:
                val = f", validation {info.val_loss:.3f}" if info.val_loss is not None else ""
                print(
                    f"  step {info.step}/{info.total_steps}: loss {info.loss:.3f}{val}",
                    file=sys.stderr,
                    flush=True,
                )

        run_dir = args.run_dir or Path(scratch) / "run"
        result = fine_tune(params.model, train_params, curated, run_dir, on_step=progress)
        items = load_eval_items(data_dir / params.evaluate.eval_suite)[: args.max_items]
        price = params.gateway.prices["default"]
        print(f"answering {len(items)} held-out items with each model ...", file=sys.stderr, flush=True)
        answer_started = time.perf_counter()
        evals = {
            name: evaluate_model(
                load_chat_model(model_params, adapter=adapter),
                items,
                [],
                params.model.system_prompt,
                params.evaluate.max_new_tokens,
                price,
            )
            for name, adapter in (("base", None), ("candidate", result.adapter_dir))
        }
        answer_seconds = time.perf_counter() - answer_started
        decision = gate(evals["candidate"], evals["base"], override(params.evaluate, require_safety=False))
        train_records = read_records(curated / TRAIN_FILE)
        coverage = paraphrases_in_train(train_records)

    scores = evals["candidate"].scores
    bands = scores["item_id"].str.split("/").str[0].map(lambda fact: _band(coverage.get(fact, 0)))
    by_band = scores.groupby(bands)["fact_hit"].agg(["mean", "count"])
    primary = params.evaluate.primary_metric
    figures: dict[str, Any] = {
        "train_overrides": train_overrides,
        "model_overrides": model_overrides,
        "learning_rate": train_params.learning_rate,
        "steps": result.steps,
        "train_records": len(train_records),
        "data_s": round(data_seconds, 1),
        "train_s": round(result.seconds, 1),
        "answer_s": round(answer_seconds, 1),
        "best_val_loss": round(result.best_val_loss or float("nan"), 4),
        "items": decision.n_items,
        f"base_{primary}": round(float(evals["base"].scores[primary].mean()), 4),
        f"candidate_{primary}": round(float(scores[primary].mean()), 4),
        "base_fact_hit": round(float(evals["base"].scores["fact_hit"].mean()), 4),
        "candidate_fact_hit": round(float(scores["fact_hit"].mean()), 4),
        "gains_ci": {metric: _triple(interval) for metric, interval in decision.intervals.items()},
        "win_rate_ci": _triple(decision.win_rate),
        "fact_hit_by_train_paraphrases": {
            band: {"fact_hit": round(float(row["mean"]), 4), "items": int(row["count"])}
            for band, row in by_band.iterrows()
        },
        "gate_passed": decision.passed,
        "failed_rules": decision.failed_rules,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
