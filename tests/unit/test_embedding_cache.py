"""The on-disk embedding cache: same vectors, each text embedded once across runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flywheel.demo.simulated_user import HashingEmbedder
from flywheel.runtime.embeddings import DTYPE_VARIABLE, EmbeddingCache, embedding_dtype
from flywheel.runtime.hardware import native_bf16


def test_cache_returns_the_encoder_vectors_and_embeds_each_text_once(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    seen: list[str] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return embedder(texts)

    texts = ["how do I export?", "what does Pro cost?", "how do I export?"]
    cache = EmbeddingCache(tmp_path / "cache.sqlite", encode, "model-a")
    first = cache(texts)
    np.testing.assert_array_equal(first, embedder(texts), "cached vectors equal the encoder's")
    cache.close()
    again = EmbeddingCache(tmp_path / "cache.sqlite", encode, "model-a")
    np.testing.assert_array_equal(again(texts[::-1]), embedder(texts[::-1]), "order follows the input")
    assert seen == texts, "a second process embeds nothing it has seen"
    assert (again.hits, again.misses) == (3, 0), "every text is a hit the second time"
    other = EmbeddingCache(tmp_path / "cache.sqlite", encode, "model-b")
    other(["how do I export?"])
    assert seen[-1] == "how do I export?", "another model id never reuses these vectors"


def test_embedding_dtype_follows_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DTYPE_VARIABLE, "float32")
    assert embedding_dtype() == "float32", "the environment picks float32"
    assert embedding_dtype("bfloat16") == "bfloat16", "an explicit choice beats the environment"
    monkeypatch.setenv(DTYPE_VARIABLE, "auto")
    expected = "bfloat16" if native_bf16() else "float32"
    assert embedding_dtype() == expected, f"auto is bf16 exactly where the CPU has hardware bf16 ({expected})"


def test_an_unknown_embedding_dtype_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DTYPE_VARIABLE, "float16")
    with pytest.raises(ValueError, match=f"{DTYPE_VARIABLE}.*'float16'"):
        embedding_dtype()
