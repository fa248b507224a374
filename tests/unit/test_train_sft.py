"""LoRA fine-tuning core on the tiny model: masking, learning, resume after a kill, early stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from flywheel.runtime.lora import new_lora
from flywheel.settings import TrainParams
from tasks.train import sft
from tasks.train.data import IGNORE_INDEX, as_served, collate, tokenize_record
from tasks.train.sft import (
    CheckpointMismatchError,
    StepInfo,
    TrainResult,
    latest_checkpoint,
    schedule_factor,
    shared_prefix_length,
    train_lora,
)
from tests.helpers.tiny_llm import build_tiny_model, build_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _record(index: int, answer: str | None = None) -> dict[str, Any]:
    return {
        "id": f"r{index}",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"What is code {index}?"},
            {"role": "assistant", "content": answer or f"Code {index} is {index * 7 % 10}."},
        ],
    }


TRAIN = [_record(i) for i in range(12)]
VAL = [_record(i) for i in range(12, 16)]


def _params(**updates: Any) -> TrainParams:
    base: dict[str, Any] = {
        "lora_rank": 4,
        "lora_alpha": 8,
        "target_modules": TINY_MODULES,
        "learning_rate": 1e-2,
        "epochs": 20,
        "max_steps": 8,
        "batch_size": 4,
        "max_seq_length": 64,
        "eval_every": 2,
        "early_stopping_patience": 0,
        "checkpoint_every": 2,
        "keep_checkpoints": 2,
        "seed": 3,
    }
    return TrainParams(**{**base, **updates})


def _train(
    out_dir: Path, params: TrainParams, on_step: Any = None, val: list[dict[str, Any]] = VAL
) -> TrainResult:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=0)
    return train_lora(model, tokenizer, TRAIN, val, params, out_dir, device="cpu", on_step=on_step)


def _weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


# -- data ----------------------------------------------------------------------


def test_labels_cover_exactly_the_answer_and_end_of_turn() -> None:
    # given a ChatML record
    tokenizer = build_tiny_tokenizer()
    record = _record(3, answer="It is blue.")
    # when it is tokenized
    example = tokenize_record(record, tokenizer, max_seq_length=256)
    # then the unmasked labels decode to the answer plus <|im_end|>, and the prompt is the runtime's
    taught = [label for label in example.labels if label != IGNORE_INDEX]
    assert tokenizer.decode(taught) == "It is blue.<|im_end|>", (
        f"loss tokens were {tokenizer.decode(taught)!r}"
    )
    prompt = tokenizer.apply_chat_template(
        record["messages"][:-1], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(example.labels) - len(taught)
    assert tokenizer.decode(example.input_ids[:n_prompt]) == prompt, (
        "the prompt must match inference rendering"
    )
    assert not example.truncated, "a short record must not be truncated"


def test_truncation_keeps_the_answer_and_the_end_of_the_prompt() -> None:
    # given a record whose system prompt is longer than the window
    tokenizer = build_tiny_tokenizer()
    record = _record(1, answer="Yes.")
    record["messages"][0]["content"] = "x" * 200
    # when tokenized into 64 tokens
    example = tokenize_record(record, tokenizer, max_seq_length=64)
    # then it fits, is flagged, and still teaches the whole answer after the question
    taught = tokenizer.decode([label for label in example.labels if label != IGNORE_INDEX])
    assert len(example.input_ids) == 64, f"got {len(example.input_ids)} tokens"
    assert example.truncated, "the record should be flagged as truncated"
    assert taught == "Yes.<|im_end|>", f"answer lost in truncation: {taught!r}"
    assert "What is code 1?" in tokenizer.decode(example.input_ids), "the question must survive truncation"


@pytest.mark.parametrize(
    ("messages", "expected_system"),
    [
        ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "served"),
        (
            [
                {"role": "system", "content": "client's own"},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ],
            "client's own",
        ),
    ],
)
def test_records_are_trained_under_the_system_prompt_they_are_served_with(
    messages: list[dict[str, str]], expected_system: str
) -> None:
    # Given a record as the request log keeps it (the gateway adds its system prompt only when absent)
    record = {"id": "r1", "messages": messages}
    # When it is prepared for training
    (served,) = as_served([record], "served")
    # Then it has exactly one system turn, first, and the same one the gateway would use
    systems = [m["content"] for m in served["messages"] if m["role"] == "system"]
    assert systems == [expected_system], f"system turns {systems}, expected [{expected_system!r}]"
    assert served["messages"][0]["role"] == "system", "the system turn must come first"
    assert served["messages"][-1] == messages[-1], "the answer must be untouched"
    assert record["messages"] is messages, "the input record must not be modified"


def test_collate_pads_right_with_masked_labels() -> None:
    tokenizer = build_tiny_tokenizer()
    short, long = (tokenize_record(_record(1, answer=a), tokenizer, 256) for a in ("A.", "A longer answer."))
    batch = collate([short, long], pad_token_id=2)
    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width), f"shape {tuple(batch['input_ids'].shape)}"
    assert int(batch["attention_mask"][0].sum()) == len(short.input_ids), "padding must be masked out"
    assert (batch["labels"][0, len(short.input_ids) :] == IGNORE_INDEX).all(), "padding must carry no loss"


def test_shared_prefix_stops_before_the_first_target_and_where_rows_differ() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 5, 6]])
    no_target = torch.full_like(ids, IGNORE_INDEX)
    assert shared_prefix_length(ids, no_target) == 3, "rows differ at position 3"
    labels = no_target.clone()
    labels[1, 2] = 3  # a target at position 2: predicted from position 1, which must not be shared
    assert shared_prefix_length(ids, labels) == 1, "the prefix must end before the earliest target"
    assert shared_prefix_length(torch.tensor([[1, 2], [2, 2]]), torch.full((2, 2), IGNORE_INDEX)) == 0


def test_the_shared_prefix_pass_gives_the_full_pass_loss_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a LoRA-wrapped tiny model and a padded batch whose rows share the system prompt
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=0)
    peft_model = new_lora(model, 4, 8, TINY_MODULES, init_lora_weights=False)
    examples = [tokenize_record(r, tokenizer, 256) for r in (_record(3), _record(11), _record(7, "No."))]
    batch = collate(examples, pad_token_id=2)
    prefix = shared_prefix_length(batch["input_ids"], batch["labels"])
    assert prefix >= sft.MIN_SHARED_PREFIX, f"the records share only {prefix} tokens: the test needs more"
    loss_fn = sft._LossFn(peft_model)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]

    def loss_and_grads() -> tuple[float, torch.Tensor]:
        for parameter in trainable:
            parameter.grad = None
        loss = loss_fn(batch)
        loss.backward()
        return float(loss), torch.cat([p.grad.flatten() for p in trainable if p.grad is not None])

    # when the loss runs once with the shared prefix and once without
    shared_loss, shared_grads = loss_and_grads()
    monkeypatch.setattr(sft, "MIN_SHARED_PREFIX", 10**6)
    full_loss, full_grads = loss_and_grads()
    # then both give the same loss and the same gradients (to float rounding)
    assert shared_loss == pytest.approx(full_loss, rel=1e-5), f"loss {shared_loss} vs {full_loss}"
    assert shared_grads.numel() == full_grads.numel() > 0, "every LoRA weight must get a gradient"
    difference = float((shared_grads - full_grads).norm() / full_grads.norm())
    assert difference < 1e-5, f"gradients differ by {difference:.3g} (relative norm)"


# -- schedule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [("cosine", 0, 1.0), ("cosine", 5, 0.5), ("linear", 5, 0.5), ("constant", 9, 1.0)],
)
def test_schedule_decays_to_zero(schedule: str, step: int, expected: float) -> None:
    factor = schedule_factor(_params(lr_schedule=schedule), total_steps=10)
    assert factor(step) == pytest.approx(expected), f"{schedule} at step {step}"


# -- training ------------------------------------------------------------------


def test_a_few_steps_lower_the_training_loss(tmp_path: Path) -> None:
    # given the tiny model, when trained 8 steps
    result = _train(tmp_path / "run", _params())
    # then the loss falls, the adapter is written and the run is recorded
    first, last = result.train_losses[0], result.train_losses[-1]
    assert last < 0.8 * first, f"loss went {first:.3f} -> {last:.3f}"
    assert (result.adapter_dir / "adapter_config.json").is_file(), "adapter config missing"
    assert result.steps == 8 and result.resumed_from is None, f"{result.steps=} {result.resumed_from=}"
    assert [step for step, _ in result.val_losses] == [2, 4, 6, 8], f"evals at {result.val_losses}"
    assert result.tokens_per_s > 0 and 0 <= result.overhead_share < 1, "timings must be recorded"


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    whole = _train(tmp_path / "whole", _params(max_steps=3, gradient_accumulation=1))
    split = _train(tmp_path / "split", _params(max_steps=3, gradient_accumulation=2))
    for a, b in zip(whole.train_losses, split.train_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5), f"losses {whole.train_losses} vs {split.train_losses}"


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # given an uninterrupted run, and a run stopped (by an exception) after step 5
    params = _params()
    full = _train(tmp_path / "full", params)

    def stop_at_5(info: StepInfo) -> None:
        if info.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", params, on_step=stop_at_5)
    # when the stopped run is called again
    resumed = _train(tmp_path / "cut", params)
    # then it resumed at the last checkpoint (step 4) and ended with the same weights
    assert resumed.resumed_from == 4, f"resumed from {resumed.resumed_from}"
    assert resumed.train_losses == full.train_losses, "loss history must match the uninterrupted run"
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    for name, tensor in full_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), f"{name} differs after resume"


def test_checkpoints_keep_only_the_last_k(tmp_path: Path) -> None:
    seen: list[str] = []
    _train(
        tmp_path / "run",
        _params(keep_checkpoints=2),
        on_step=lambda i: i.checkpoint and seen.append(i.checkpoint.name),
    )
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert seen == ["step-000002", "step-000004", "step-000006"], f"written: {seen}"
    assert left == ["step-000004", "step-000006"], f"kept: {left}"


def test_a_finished_run_is_returned_not_retrained(tmp_path: Path) -> None:
    first = _train(tmp_path / "run", _params(max_steps=2))
    again = _train(tmp_path / "run", _params(max_steps=2))
    assert again.resumed_from == 2 and again.train_losses == first.train_losses, "should reuse result.json"


def test_resume_with_other_params_is_refused(tmp_path: Path) -> None:
    def stop_at_3(info: StepInfo) -> None:
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", _params(), on_step=stop_at_3)
    with pytest.raises(CheckpointMismatchError):
        _train(tmp_path / "run", _params(learning_rate=5e-3))


def test_early_stopping_on_rising_validation_loss(tmp_path: Path) -> None:
    # given validation records that contradict the training answers (validation loss rises as training fits)
    contradicting = [_record(i, answer=f"Nope, never {i}!") for i in range(4)]
    params = _params(max_steps=40, eval_every=1, early_stopping_patience=2, learning_rate=3e-2)
    # when trained
    result = _train(tmp_path / "run", params, val=contradicting)
    # then it stops early, two evaluations after the best, and keeps the best weights
    assert result.stopped_early, f"no early stop; val losses {result.val_losses}"
    assert result.steps < 40, f"ran {result.steps} steps"
    assert result.best_step == result.steps - 2, f"best {result.best_step}, stopped at {result.steps}"


# -- kill and re-run -----------------------------------------------------------

_CHILD = """
import os, signal, sys
from pathlib import Path
from tests.unit.test_train_sft import _params, _train
kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
def on_step(info):
    if info.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
result = _train(Path(sys.argv[1]), _params(), on_step=on_step)
print(result.resumed_from)
"""


def _run_child(out_dir: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILL_AT_STEP": str(kill_at), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(out_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    # given a training process SIGKILLed at step 7 (checkpoints at 2, 4, 6)
    out = tmp_path / "run"
    killed = _run_child(out, kill_at=7)
    assert killed.returncode == -signal.SIGKILL, (
        f"child was not killed: rc={killed.returncode} {killed.stderr[-500:]}"
    )
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None and checkpoint.name == "step-000006", f"last checkpoint {checkpoint}"
    assert not (out / "result.json").exists(), "a killed run must not look finished"
    # when it is run again
    rerun = _run_child(out, kill_at=0)
    # then it resumed from step 6, finished, and matches an uninterrupted run
    assert rerun.returncode == 0, f"re-run failed: {rerun.stderr[-1000:]}"
    assert rerun.stdout.strip().splitlines()[-1] == "6", f"resumed_from printed {rerun.stdout!r}"
    finished = json.loads((out / "result.json").read_text())
    full = _train(tmp_path / "full", _params())
    assert finished["train_losses"] == list(full.train_losses), (
        "resumed losses differ from an uninterrupted run"
    )
