"""The model runtime: a local chat LLM (SmolLM2), LoRA adapters and sentence embeddings.

Importing this package is cheap: torch, transformers and sentence-transformers
load on first use of a name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flywheel.runtime.base import (
    AdapterNotFoundError,
    ContextLengthError,
    FinishReason,
    Generation,
    LLMRuntimeError,
    Message,
    Messages,
    ModelNotFoundError,
)
from flywheel.runtime.paths import SMOLLM2_SOURCE, ensure_offline, model_files, resolve_source, smollm2_dir

if TYPE_CHECKING:
    from flywheel.runtime.embeddings import Embedder, load_embedder
    from flywheel.runtime.llm import (
        ChatModel,
        GenerationStream,
        clear_model_cache,
        load_chat_model,
        unload_chat_model,
    )
    from flywheel.runtime.lora import attach_adapter, new_lora, save_adapter

# Public name -> submodule that defines it; imported on first access (PEP 562).
_LAZY = {
    "ChatModel": "llm",
    "GenerationStream": "llm",
    "load_chat_model": "llm",
    "clear_model_cache": "llm",
    "unload_chat_model": "llm",
    "Embedder": "embeddings",
    "load_embedder": "embeddings",
    "attach_adapter": "lora",
    "new_lora": "lora",
    "save_adapter": "lora",
}

__all__ = [
    "SMOLLM2_SOURCE",
    "AdapterNotFoundError",
    "ChatModel",
    "ContextLengthError",
    "Embedder",
    "FinishReason",
    "Generation",
    "GenerationStream",
    "LLMRuntimeError",
    "Message",
    "Messages",
    "ModelNotFoundError",
    "attach_adapter",
    "clear_model_cache",
    "ensure_offline",
    "load_chat_model",
    "load_embedder",
    "model_files",
    "new_lora",
    "resolve_source",
    "save_adapter",
    "smollm2_dir",
    "unload_chat_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
