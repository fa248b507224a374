"""Resumable LoRA fine-tuning (supervised, loss on the answer tokens only), as a plain function.

`train_lora` wraps a causal LM with a fresh PEFT LoRA adapter and trains it
with AdamW on tokenized ChatML records. Everything that decides the result is
fixed by `TrainParams.seed`: the adapter's initialisation, the data order
(one seeded permutation per epoch) and dropout. Every `checkpoint_every`
steps it writes `out_dir/checkpoints/step-NNNNNN` (adapter weights, optimizer
and scheduler state, RNG states, step, data position, loss history) through a
temporary folder and a rename, keeping the last `keep_checkpoints`. Calling
`train_lora` again with the same `out_dir` resumes from the newest checkpoint;
on CPU the resumed run ends with the same adapter weights, bit for bit, as an
uninterrupted one.

The final adapter (`out_dir/adapter`) holds the weights with the best
validation loss when validation records are given, else the last weights;
`out_dir/result.json` marks a finished run, and calling again returns it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from flywheel.runtime.lora import new_lora, save_adapter
from tasks.train.data import IGNORE_INDEX, Example, collate, tokenize_records

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flywheel.settings import TrainParams

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
RESULT = "result.json"
_STATE = "state.json"
_OPTIMIZER = "optimizer.pt"
_RNG = "rng.pt"
_BEST = "best_adapter.pt"
_STEP_PREFIX = "step-"
# Params that change where state is written, not what is learned: free to change on resume.
_NOT_FINGERPRINTED = {"checkpoint_every", "keep_checkpoints"}


class CheckpointMismatchError(RuntimeError):
    """`out_dir` holds a run with other params or other data: resuming it would mix two runs."""


@dataclass(frozen=True)
class StepInfo:
    """What `on_step` receives after each optimizer step (and its eval/checkpoint, if any)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    tokens: int
    seconds: float
    val_loss: float | None = None
    checkpoint: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    """A finished LoRA training run. Losses cover the whole run; timings cover this call."""

    adapter_dir: Path
    steps: int
    total_steps: int
    train_losses: tuple[float, ...]
    val_losses: tuple[tuple[int, float], ...]
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    resumed_from: int | None
    device: str
    tokens: int
    tokens_per_s: float
    seconds: float
    loop_seconds: float
    overhead_seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def overhead_share(self) -> float:
        """Share of this call's wall time spent outside the training steps (setup, eval, checkpoints)."""
        return 0.0 if self.seconds <= 0 else max(0.0, self.seconds - self.loop_seconds) / self.seconds

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        data["overhead_seconds"] = dict(self.overhead_seconds)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainResult:
        values = dict(data)
        values["adapter_dir"] = Path(values["adapter_dir"])
        values["train_losses"] = tuple(values["train_losses"])
        values["val_losses"] = tuple((int(s), float(v)) for s, v in values["val_losses"])
        return cls(**values)


@dataclass
class _Progress:
    """The loop's mutable state: everything a checkpoint must restore besides tensors."""

    step: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    tokens: int = 0


def pick_device(device: str | None = None) -> str:
    """`device` if given, else "cuda" when available, else "cpu"."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def schedule_factor(params: TrainParams, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier for a 0-based step: linear warmup, then the decay to 0."""
    warmup = min(params.warmup_steps, total_steps)
    decay_steps = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay_steps)
        if params.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if params.lr_schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def epoch_order(n_records: int, seed: int, epoch: int) -> np.ndarray:
    """The record order of one epoch: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_records)


def _fingerprint(params: TrainParams, train: Sequence[Example], val: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps(params.model_dump(mode="json", exclude=_NOT_FINGERPRINTED), sort_keys=True).encode()
    )
    for name, examples in (("train", train), ("val", val)):
        digest.update(name.encode())
        for example in examples:
            digest.update(repr((example.input_ids, example.labels)).encode())
    return digest.hexdigest()


# A shared prefix shorter than this is not worth a second forward call.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(input_ids: torch.Tensor, labels: torch.Tensor) -> int:
    """How many leading tokens every row of the batch shares before the first target.

    The served system prompt opens every record, so a batch repeats it in each
    row; running it once and sharing its keys and values is exact (causal
    attention: a prefix never sees what follows it) and saves its compute for
    the other rows, forward and backward. The prefix stops one token before the
    earliest target, so no target is predicted from a prefix position.
    """
    same = (input_ids == input_ids[:1]).all(dim=0)
    common = int(same.long().cumprod(dim=0).sum())
    targets = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first_target = int(targets[0]) if len(targets) else input_ids.shape[1]
    return max(0, min(common, first_target - 1))


class _LossFn:
    """Summed cross-entropy over answer tokens, computing logits only where labels are set.

    The LM head is the costliest layer per token (a 49k-wide projection for
    SmolLM2) and most tokens are prompt: applying it to the answer positions
    alone saves time and memory. A prefix all rows share (the system prompt)
    runs once for the batch (`shared_prefix_length`): about 30% off a step on
    the demo. Models the shortcut does not fit fall back to full logits.
    """

    def __init__(self, peft_model: PeftModel) -> None:
        causal = cast("PreTrainedModel", peft_model.get_base_model())
        self.peft_model = peft_model
        self.backbone: torch.nn.Module | None = getattr(
            causal, getattr(causal, "base_model_prefix", ""), None
        )
        self.head: torch.nn.Module | None = causal.get_output_embeddings()
        softcap = getattr(causal.config, "final_logit_softcapping", None)
        self.shortcut = self.backbone is not None and self.head is not None and softcap is None

    def _hidden(self, batch: Mapping[str, torch.Tensor], prefix: int) -> torch.Tensor:
        """The backbone's last hidden states of positions `prefix` onwards."""
        assert self.backbone is not None  # only called on the shortcut path
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        if prefix < MIN_SHARED_PREFIX or input_ids.shape[0] < 2:
            return self.backbone(input_ids=input_ids, attention_mask=attention)[0][:, prefix:]
        shared = self.backbone(input_ids=input_ids[:1, :prefix], use_cache=True)
        cache = shared.cache
        cache.batch_repeat_interleave(input_ids.shape[0])  # gradients flow back to the one prefix pass
        positions = torch.arange(prefix, input_ids.shape[1], device=input_ids.device)
        return self.backbone(
            input_ids=input_ids[:, prefix:],
            attention_mask=attention,
            position_ids=positions.unsqueeze(0).expand(input_ids.shape[0], -1),
            cache=cache,
        )[0]

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.shortcut:
            assert self.head is not None  # narrowed by self.shortcut
            prefix = shared_prefix_length(batch["input_ids"], batch["labels"])
            labels = batch["labels"][:, prefix + 1 :]
            mask = labels != IGNORE_INDEX
            hidden = self._hidden(batch, prefix)
            logits = self.head(hidden[:, :-1][mask])
        else:
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            output = self.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = output.logits[:, :-1][mask]
        return F.cross_entropy(logits.float(), labels[mask], reduction="sum")


def _answer_targets(examples: Sequence[Example]) -> int:
    # Position 0 is never a target (the loss predicts token t from position t-1).
    return sum(sum(1 for label in example.labels[1:] if label != IGNORE_INDEX) for example in examples)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trainable_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {
        name: tensor.detach().to("cpu", copy=True)
        for name, tensor in get_peft_model_state_dict(peft_model).items()
    }


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp folder into place; an old folder of that name is removed first."""
    if final.exists():
        stale = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(stale)
        tmp.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        tmp.rename(final)


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a temp folder never matches: renamed only when complete)."""
    folder = out_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(_STEP_PREFIX) and (p / _STATE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_STEP_PREFIX) :]))


def _remove_stale_temp(out_dir: Path) -> None:
    """Remove half-written temp folders a killed run left behind (one run per `out_dir` at a time)."""
    for folder in (out_dir, out_dir / CHECKPOINTS):
        if folder.is_dir():
            for path in folder.glob(".tmp-*"):
                shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under `out_dir`, if any."""
    found = _checkpoint_dirs(out_dir)
    return found[-1] if found else None


def _write_checkpoint(
    out_dir: Path,
    peft_model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: _Progress,
    best_state: dict[str, torch.Tensor] | None,
    fingerprint: str,
    keep: int,
) -> Path:
    folder = out_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{_STEP_PREFIX}{progress.step:06d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(peft_model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / _OPTIMIZER)
    torch.save(_rng_state(), tmp / _RNG)
    if best_state is not None:
        torch.save(best_state, tmp / _BEST)
    state = {"fingerprint": fingerprint, **asdict(progress)}
    (tmp / _STATE).write_text(json.dumps(state), encoding="utf-8")
    for path in tmp.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    _replace_dir(tmp, final)
    for old in _checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_checkpoint(
    checkpoint: Path,
    peft_model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: str,
    device: str,
) -> tuple[_Progress, dict[str, torch.Tensor] | None]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((checkpoint / _STATE).read_text(encoding="utf-8"))
    if state.pop("fingerprint") != fingerprint:
        raise CheckpointMismatchError(
            f"{checkpoint} was written with other train params or other records; use a new output folder"
        )
    set_peft_model_state_dict(
        peft_model, load_file(str(checkpoint / "adapter_model.safetensors"), device=device)
    )
    # Our own files, holding numpy RNG state and optimizer dicts: not loadable with weights_only.
    saved = torch.load(checkpoint / _OPTIMIZER, map_location=device, weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    best = torch.load(checkpoint / _BEST, map_location="cpu") if (checkpoint / _BEST).is_file() else None
    _set_rng_state(torch.load(checkpoint / _RNG, weights_only=False))
    progress = _Progress(**state)
    progress.val_losses = [(int(s), float(v)) for s, v in progress.val_losses]
    return progress, best


def _evaluate(
    loss_fn: _LossFn, examples: Sequence[Example], batch_size: int, pad_id: int, device: str
) -> float:
    """Mean loss per answer token over `examples`, in their order, dropout off."""
    loss_fn.peft_model.eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
            total += float(loss_fn(batch))
            targets += _answer_targets(chunk)
    loss_fn.peft_model.train()
    return total / max(1, targets)


def train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_records: Sequence[Mapping[str, Any]],
    val_records: Sequence[Mapping[str, Any]],
    params: TrainParams,
    out_dir: Path,
    device: str | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ChatML records; resume from `out_dir`'s last checkpoint if there is one.

    The LoRA layers are injected into `model` in place and removed again at
    the end (the base weights are never changed); the model is left on
    `device` in eval mode. Returns the finished run, with the adapter in
    `out_dir/adapter`. `on_step` is called after every optimizer step.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = pick_device(device)
    if not train_records:
        raise ValueError("no training records")
    train = tokenize_records(train_records, tokenizer, params.max_seq_length)
    val = tokenize_records(val_records, tokenizer, params.max_seq_length)
    fingerprint = _fingerprint(params, train, val)

    finished = _finished_result(out_dir, fingerprint)
    if finished is not None:
        return finished

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(tokenizer.eos_token_id)
    steps_per_epoch = math.ceil(len(train) / params.batch_size)
    total_steps = min(params.max_steps, params.epochs * steps_per_epoch)

    _remove_stale_temp(out_dir)
    _seed_everything(params.seed)
    peft_model = new_lora(
        model, params.lora_rank, params.lora_alpha, params.target_modules, params.lora_dropout
    )
    peft_model.to(device)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(params, total_steps))
    loss_fn = _LossFn(peft_model)

    progress, best_state = _Progress(), None
    resumed_from: int | None = None
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        progress, best_state = _read_checkpoint(
            checkpoint, peft_model, optimizer, scheduler, fingerprint, device
        )
        resumed_from = progress.step
        logger.info("resuming LoRA training from %s (step %d of %d)", checkpoint, progress.step, total_steps)

    overhead = {"setup": time.perf_counter() - started, "eval": 0.0, "checkpoint": 0.0, "save": 0.0}
    loop_seconds, call_tokens = 0.0, 0
    micro_size = math.ceil(params.batch_size / params.gradient_accumulation)
    peft_model.train()
    while progress.step < total_steps and not progress.stopped_early:
        step_started = time.perf_counter()
        epoch, index = divmod(progress.step, steps_per_epoch)
        order = epoch_order(len(train), params.seed, epoch)
        batch_examples = [
            train[i] for i in order[index * params.batch_size : (index + 1) * params.batch_size]
        ]
        targets = _answer_targets(batch_examples)
        step_loss, step_tokens = 0.0, 0
        for start in range(0, len(batch_examples), micro_size):
            micro = batch_examples[start : start + micro_size]
            batch = {k: v.to(device) for k, v in collate(micro, pad_id).items()}
            loss_sum = loss_fn(batch)
            # Dividing by the whole step's target count makes accumulation equal one big batch.
            (loss_sum / max(1, targets)).backward()
            step_loss += float(loss_sum.detach())
            step_tokens += int(batch["attention_mask"].sum())
        if params.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
        learning_rate = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.tokens += step_tokens
        progress.train_losses.append(step_loss / max(1, targets))
        step_seconds = time.perf_counter() - step_started
        loop_seconds += step_seconds
        call_tokens += step_tokens

        val_loss = None
        if val and (progress.step % params.eval_every == 0 or progress.step == total_steps):
            eval_started = time.perf_counter()
            val_loss = _evaluate(loss_fn, val, params.batch_size, pad_id, device)
            progress.val_losses.append((progress.step, val_loss))
            if (
                progress.best_val_loss is None
                or val_loss < progress.best_val_loss - params.early_stopping_min_delta
            ):
                progress.best_val_loss, progress.best_step = val_loss, progress.step
                progress.evals_without_improvement = 0
                best_state = _trainable_state(peft_model)
            else:
                progress.evals_without_improvement += 1
                patience = params.early_stopping_patience
                progress.stopped_early = patience > 0 and progress.evals_without_improvement >= patience
            overhead["eval"] += time.perf_counter() - eval_started
            logger.info(
                "step %d: validation loss %.4f (best %.4f)", progress.step, val_loss, progress.best_val_loss
            )

        written = None
        if (
            progress.step % params.checkpoint_every == 0
            and progress.step < total_steps
            and not progress.stopped_early
        ):
            checkpoint_started = time.perf_counter()
            written = _write_checkpoint(
                out_dir,
                peft_model,
                optimizer,
                scheduler,
                progress,
                best_state,
                fingerprint,
                params.keep_checkpoints,
            )
            overhead["checkpoint"] += time.perf_counter() - checkpoint_started
        if on_step is not None:
            on_step(
                StepInfo(
                    step=progress.step,
                    total_steps=total_steps,
                    epoch=epoch,
                    loss=progress.train_losses[-1],
                    learning_rate=learning_rate,
                    tokens=step_tokens,
                    seconds=step_seconds,
                    val_loss=val_loss,
                    checkpoint=written,
                )
            )

    save_started = time.perf_counter()
    adapter_dir = _save_final(out_dir, peft_model, best_state)
    peft_model.unload()  # removes the LoRA layers: `model` is the plain base again
    model.eval()
    overhead["save"] = time.perf_counter() - save_started
    seconds = time.perf_counter() - started
    result = TrainResult(
        adapter_dir=adapter_dir,
        steps=progress.step,
        total_steps=total_steps,
        train_losses=tuple(progress.train_losses),
        val_losses=tuple(progress.val_losses),
        best_val_loss=progress.best_val_loss,
        best_step=progress.best_step,
        stopped_early=progress.stopped_early,
        resumed_from=resumed_from,
        device=device,
        tokens=progress.tokens,
        tokens_per_s=call_tokens / loop_seconds if loop_seconds > 0 else 0.0,
        seconds=seconds,
        loop_seconds=loop_seconds,
        overhead_seconds=overhead,
    )
    _write_result(out_dir, result, fingerprint)
    return result


def _save_final(out_dir: Path, peft_model: PeftModel, best_state: dict[str, torch.Tensor] | None) -> Path:
    """Write the best (else the last) adapter weights to `out_dir/adapter`, atomically."""
    from peft import set_peft_model_state_dict

    if best_state is not None:
        set_peft_model_state_dict(peft_model, best_state)
    final = out_dir / ADAPTER
    tmp = out_dir / f".tmp-{ADAPTER}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(peft_model, tmp)
    _replace_dir(tmp, final)
    return final


def _write_result(out_dir: Path, result: TrainResult, fingerprint: str) -> None:
    tmp = out_dir / f".{RESULT}.{os.getpid()}"
    tmp.write_text(json.dumps({"fingerprint": fingerprint, **result.to_json()}, indent=2), encoding="utf-8")
    tmp.replace(out_dir / RESULT)


def _finished_result(out_dir: Path, fingerprint: str) -> TrainResult | None:
    """The result of a finished run in `out_dir` with the same fingerprint (a finished resume)."""
    path = out_dir / RESULT
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.pop("fingerprint") != fingerprint:
        raise CheckpointMismatchError(f"{out_dir} holds a finished run with other params or records")
    result = TrainResult.from_json(data)
    return replace(result, resumed_from=result.steps)
