"""One retraining run as plain functions: read the curated splits, fine-tune, resume where it stopped."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from flywheel.settings import ModelParams, TrainParams
from tasks.train.data import as_served
from tasks.train.sft import StepInfo, TrainResult, train_lora

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    """ChatML records of a curated split (JSON lines)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the curate flow first")
    with path.open("rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def run_dir(home: Path, data: dict[str, str], model: ModelParams, params: TrainParams) -> Path:
    """Where a run keeps its checkpoints: one folder per (data, base model, params).

    A re-run with the same inputs finds its checkpoints there and resumes; new
    data or params start a new folder instead of mixing two runs.
    """
    key = orjson.dumps(
        {"data": data, "model": model.model_dump(mode="json"), "train": params.model_dump(mode="json")},
        option=orjson.OPT_SORT_KEYS,
    )
    return home / "train" / hashlib.sha256(key).hexdigest()[:16]


def fine_tune(
    model_params: ModelParams,
    params: TrainParams,
    curated_dir: Path,
    out_dir: Path,
    device: str | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on the base model with the curated train split (validation for early stop)."""
    from flywheel.runtime.llm import load_chat_model

    train = as_served(read_records(curated_dir / TRAIN_FILE), model_params.system_prompt)
    validation = as_served(read_records(curated_dir / VALIDATION_FILE), model_params.system_prompt)
    # LoRA trains in float32 whatever dtype serves: bf16 gradients on CPU are slow and lose the small updates.
    base = load_chat_model(model_params.model_copy(update={"dtype": "float32"}))
    # a private copy: the cached base model keeps serving other callers untouched
    model = cast("PreTrainedModel", copy.deepcopy(base.model))  # a cached base is a plain model
    return train_lora(
        model, base.tokenizer, train, validation, params, out_dir, device=device, on_step=on_step
    )
