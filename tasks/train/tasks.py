"""Prefect tasks of the retrain flow: thin shells over `tasks.train.run` and the MLflow record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from flywheel.lineage import data_hashes, git_sha
from flywheel.settings import ModelParams, TrainParams
from tasks.train.run import TRAIN_FILE, VALIDATION_FILE, fine_tune, run_dir
from tasks.train.sft import StepInfo, TrainResult

PROMPT_CANDIDATE = "prompt_candidate/system_prompt.txt"  # artifact of the retrain run


@task(name="curated-data-hashes")
def curated_hashes(curated_dir: Path) -> dict[str, str]:
    """Prefect task: md5 of the splits the run trains on (the DVC hashes of the curate outputs)."""
    return data_hashes([curated_dir / TRAIN_FILE, curated_dir / VALIDATION_FILE], curated_dir.parent.parent)


@task(name="fine-tune-lora")
def fine_tune_lora(
    model: ModelParams, params: TrainParams, curated_dir: Path, home: Path, data: dict[str, str]
) -> TrainResult:
    """Prefect task: LoRA fine-tuning that resumes from its last checkpoint when re-run."""

    def progress(info: StepInfo) -> None:
        if (
            info.step == 1
            or info.step % 10 == 0
            or info.step == info.total_steps
            or info.val_loss is not None
        ):
            val = f", val loss {info.val_loss:.4f}" if info.val_loss is not None else ""
            print(f"step {info.step}/{info.total_steps}: loss {info.loss:.4f}{val}, {info.seconds:.0f} s")

    return fine_tune(model, params, curated_dir, run_dir(home, data, model, params), on_step=progress)


@task(name="log-training-run", retries=2, retry_delay_seconds=[2, 5])
def log_training(
    tracking_uri: str, experiment: str, model: ModelParams, params: TrainParams, result: TrainResult,
    data: dict[str, str],
) -> str:  # fmt: skip
    """Prefect task: params, loss curves, data hashes, git sha, timings and the adapter as an MLflow run."""
    from registry.runs import log_stage_run

    tags = {f"flywheel.dvc.{path}": md5 for path, md5 in data.items()}
    tags |= {"flywheel.git_sha": git_sha(), "flywheel.base_model": model.gguf_file or model.source}
    metrics: dict[str, float] = {
        "steps": result.steps,
        "tokens_per_s": result.tokens_per_s,
        "wall_seconds": result.seconds,
        "overhead_share": result.overhead_share,
        "final_train_loss": result.train_losses[-1] if result.train_losses else float("nan"),
    }
    if result.best_val_loss is not None:
        metrics["best_val_loss"] = result.best_val_loss
    series = {
        "train_loss": list(enumerate(result.train_losses, start=1)),
        "val_loss": [(step, loss) for step, loss in result.val_losses],
    }
    logged: dict[str, Any] = {**params.model_dump(mode="json"), "device": result.device}
    return log_stage_run(
        tracking_uri, experiment, "retrain", logged, metrics, tags, [result.adapter_dir], series=series
    )


@task(name="build-prompt-candidate", retries=2, retry_delay_seconds=[2, 5])
def build_prompt_candidate(
    tracking_uri: str, run_id: str, model: ModelParams, params: TrainParams, curated_dir: Path, home: Path
) -> str | None:
    """Prefect task: the few-shot prompt candidate, kept with the run as `prompt_candidate/system_prompt.txt`.

    It is gated by the evaluate flow (`candidate=prompt`) and registered in the
    prompt registry with its verdict, as a model candidate is.
    """
    from registry.runs import log_to_run
    from tasks.curate.run import minilm_embed
    from tasks.train.prompt_candidate import choose_examples, fewshot_system_prompt
    from tasks.train.run import read_records

    if params.prompt_examples == 0:
        print("prompt_examples is 0: no prompt candidate")
        return None
    examples = choose_examples(
        read_records(curated_dir / TRAIN_FILE),
        minilm_embed(home / "cache" / "embeddings.sqlite"),
        params.prompt_examples,
    )
    text = fewshot_system_prompt(model.system_prompt, examples)
    log_to_run(
        tracking_uri, run_id, {"prompt_candidate_examples": len(examples)}, {}, [], {PROMPT_CANDIDATE: text}
    )
    print(f"prompt candidate with {len(examples)} examples logged as {PROMPT_CANDIDATE}")
    return text


@task(name="publish-training-summary")
def publish_training_summary(result: TrainResult, run_id: str) -> None:
    """Prefect task: a markdown artifact with the run's figures."""
    val = f"{result.best_val_loss:.4f} (step {result.best_step})" if result.best_val_loss is not None else "-"
    create_markdown_artifact(
        key="retrain-summary",
        markdown=(
            f"# LoRA fine-tuning\n\nMLflow run `{run_id}` (adapter under artifact `adapter/`)\n\n"
            f"| figure | value |\n|---|---|\n| steps | {result.steps} / {result.total_steps} |\n"
            f"| resumed from step | {result.resumed_from or '-'} |\n"
            f"| stopped early | {result.stopped_early} |\n"
            f"| best validation loss | {val} |\n| tokens/s | {result.tokens_per_s:.0f} |\n"
            f"| wall time | {result.seconds:.0f} s |\n"
            f"| outside the training loop | {result.overhead_share:.1%} |\n"
        ),
    )
