"""retrain: a LoRA candidate fine-tuned on the curated splits, recorded in MLflow."""

from __future__ import annotations

from prefect import flow

from flywheel.settings import Environment, load_params, override
from tasks.train.tasks import (
    build_prompt_candidate,
    curated_hashes,
    fine_tune_lora,
    log_training,
    publish_training_summary,
)


@flow(name="retrain", log_prints=True)
def retrain(max_steps: int | None = None, learning_rate: float | None = None) -> dict[str, object]:
    """Fine-tune a LoRA adapter on `data/curated/` and log it as an MLflow run.

    1. read params (`model`, `train`; flow parameters override `train`) and where things run
    2. hash the curated splits it trains on (lineage for the model version)
    3. fine-tune (resumes from the last checkpoint when re-run after a crash)
    4. log params, loss curves, data hashes, git sha, timings and the adapter to MLflow
    5. a prompt candidate: the system prompt plus few-shot examples from the curated train split,
       chosen for diversity, logged with the run (`evaluate` gates it with `candidate=prompt`)
    6. publish a summary artifact
    """
    params = load_params()
    train = override(params.train, max_steps=max_steps, learning_rate=learning_rate)
    env = Environment()
    curated = env.data_dir / params.curate.curated_dir
    data = curated_hashes(curated)
    result = fine_tune_lora(params.model, train, curated, env.home, data)
    run_id = log_training(env.tracking_uri, params.project.experiment, params.model, train, result, data)
    build_prompt_candidate(env.tracking_uri, run_id, params.model, train, curated, env.home)
    publish_training_summary(result, run_id)
    return {"run_id": run_id, "steps": result.steps, "best_val_loss": result.best_val_loss, "data": data}
