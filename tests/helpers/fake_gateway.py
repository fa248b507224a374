"""Test doubles for the gateway: an echoing backend, a static route provider, a fake embedder.

The backend answers `echo: <last user message>` (cut to max_tokens words), streams it
word by word, and fails on purpose when the last user message is one of the triggers
below, so tests drive each error path through the real HTTP layer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.contracts import (
    BackendError,
    Completion,
    CompletionRequest,
    QueueFullError,
    Route,
    RouteTable,
    StreamDelta,
    StreamResult,
)

QUEUE_FULL = "__queue_full__"
BACKEND_ERROR = "__backend_error__"
FAIL_MID_STREAM = "__fail_mid_stream__"


def _words(text: str) -> int:
    return len(text.split())


class EchoBackend:
    """Deterministic: the same request gives the same answer, instantly."""

    def __init__(
        self, name: str = "echo", served_model: str = "echo-model", delta_pause_s: float = 0.0
    ) -> None:
        self.name = name
        self.served_model = served_model
        self.delta_pause_s = delta_pause_s  # a pause between streamed words, so a client can leave midway
        self.calls: list[CompletionRequest] = []
        self.closed = False
        self.streams_closed = 0  # streams that ended, finished or not (the app must close what it opened)

    def _answer(self, request: CompletionRequest) -> tuple[str, str, int, int]:
        question = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        if question == QUEUE_FULL:
            raise QueueFullError(retry_after_s=3)
        if question == BACKEND_ERROR:
            raise BackendError("the fake backend was told to fail")
        words = f"echo: {question}".split()
        finish = "length" if len(words) > request.max_tokens else "stop"
        text = " ".join(words[: request.max_tokens])
        prompt_tokens = sum(_words(m["content"]) for m in request.messages)
        return text, finish, prompt_tokens, _words(text)

    def _completion(
        self, text: str, finish: str, prompt_tokens: int, completion_tokens: int, started: float
    ) -> Completion:
        return Completion(
            text=text,
            finish_reason=finish,  # type: ignore[arg-type]  # "stop" | "length" by construction
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=0.0,
            latency_s=time.perf_counter() - started,
            backend=self.name,
            served_model=self.served_model,
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        """The echo, as one completion."""
        self.calls.append(request)
        started = time.perf_counter()
        text, finish, prompt_tokens, completion_tokens = self._answer(request)
        return self._completion(text, finish, prompt_tokens, completion_tokens, started)

    async def stream(self, request: CompletionRequest, result: StreamResult) -> AsyncIterator[StreamDelta]:
        """The echo, one word per delta."""
        self.calls.append(request)
        started = time.perf_counter()
        text, finish, prompt_tokens, completion_tokens = self._answer(request)
        fail_after_first = FAIL_MID_STREAM in text
        try:
            for index, word in enumerate(text.split(" ")):
                if index == 1 and fail_after_first:
                    raise BackendError("the fake backend failed mid-stream")
                if index and self.delta_pause_s:
                    await asyncio.sleep(self.delta_pause_s)
                yield StreamDelta(word if index == 0 else " " + word)
        finally:
            self.streams_closed += 1
        result.completion = self._completion(text, finish, prompt_tokens, completion_tokens, started)

    async def aclose(self) -> None:
        """Remember that the app closed it."""
        self.closed = True


def route(arm: str = "champion", version: str = "1", system_prompt: str | None = "You are a test.") -> Route:
    """A route of the test model."""
    return Route(
        arm=arm,  # type: ignore[arg-type]  # tests pass champion | challenger
        model_name="test-model",
        model_version=version,
        prompt_name="test-prompt",
        prompt_version="1",
        system_prompt=system_prompt,
    )


@dataclass
class StaticRoutes:
    """A RouteProvider whose table and health the test sets."""

    table: RouteTable = field(default_factory=lambda: RouteTable(champion=route()))
    state: dict[str, object] = field(default_factory=lambda: {"registry": "ok", "error": None})

    def current(self) -> RouteTable:
        """The table the test set."""
        return self.table

    def health(self) -> Mapping[str, object]:
        """The health the test set."""
        return self.state


class BagOfWordsEmbedder:
    """Unit vectors of hashed lower-cased words: texts with the same words embed the same."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """One unit row per text."""
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace("?", " ").replace(",", " ").split():
                out[row, sum(word.encode()) % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out
