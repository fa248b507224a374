"""LoRA adapters (PEFT): create, save and attach. Training lives with the retrain stage.

Both `new_lora` and `attach_adapter` inject LoRA layers into the base model
*in place* (PEFT's behaviour); pass `copy.deepcopy(model)` when the plain base
must stay usable, as `load_chat_model` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.runtime.base import AdapterNotFoundError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

ADAPTER_CONFIG = "adapter_config.json"


def new_lora(
    model: PreTrainedModel,
    rank: int,
    alpha: int,
    target_modules: Sequence[str],
    dropout: float = 0.0,
    *,
    init_lora_weights: bool = True,
) -> PeftModel:
    """Wrap `model` with a fresh, trainable LoRA adapter (modifies `model` in place).

    `init_lora_weights=True` (PEFT's default) starts B at zero, so the adapter
    is a no-op until trained; `False` initialises it randomly.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=init_lora_weights,
    )
    return get_peft_model(model, config)


def save_adapter(peft_model: PeftModel, out_dir: Path | str) -> Path:
    """Write the adapter weights and config (not the base model) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers="auto" (the default) asks the Hub whether the base
    # vocabulary changed; LoRA here never resizes embeddings, so skip the lookup.
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return out


def attach_adapter(model: PreTrainedModel, adapter_dir: Path | str, *, trainable: bool = False) -> PeftModel:
    """Load a saved adapter onto `model` (modifies `model` in place); eval mode unless trainable."""
    from peft import PeftModel

    folder = Path(adapter_dir)
    if not (folder / ADAPTER_CONFIG).is_file():
        # Checked here because PEFT would take a missing path for a Hub id.
        raise AdapterNotFoundError(f"{folder} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable, local_files_only=True)
    if not trainable:
        peft_model.eval()
    return peft_model
