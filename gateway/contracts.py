"""The seams between the gateway's parts: routes, backends and what flows between them.

The HTTP layer (`gateway.app`) resolves a `Route` from a `RouteProvider`, builds a
`CompletionRequest`, and asks a `Backend` (normally the fallback chain) for a
`Completion` or a stream of `StreamDelta`s ending in a `Completion`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

Arm = Literal["champion", "challenger"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Route:
    """What one arm serves: a model version (and its adapter) and a prompt version."""

    arm: Arm
    model_name: str  # the registered model (or the base model's name when none is registered)
    model_version: str | None  # None: the base model, nothing registered yet
    adapter_uri: str | None = None  # MLflow artifact URI of a LoRA adapter; None = the base model
    prompt_name: str | None = None
    prompt_version: str | None = None
    system_prompt: str | None = None  # the prompt's system message, applied by the gateway

    @property
    def cache_namespace(self) -> str:
        """Cache entries live per model+prompt version: a promotion never serves the old version's answers."""
        return f"{self.model_name}@{self.model_version}|{self.prompt_name}@{self.prompt_version}"


@dataclass(frozen=True)
class RouteTable:
    """An immutable snapshot of the routing; swapped whole, so no request sees half an update."""

    champion: Route
    challenger: Route | None = None
    canary_weight: float = 0.0  # share of users (0..1) sent to the challenger
    source: Literal["registry", "default"] = "default"
    fetched_at: float = 0.0

    def pick(self, sticky_key: str) -> Route:
        """The arm for this user: stable across requests; `canary_weight` of users go to the challenger."""
        if self.challenger is None or self.canary_weight <= 0.0:
            return self.champion
        bucket = int.from_bytes(hashlib.blake2b(sticky_key.encode(), digest_size=8).digest(), "big") / 2**64
        return self.challenger if bucket < self.canary_weight else self.champion


class RouteProvider(Protocol):
    """Gives the current route table; polls the registry behind the scenes."""

    def current(self) -> RouteTable: ...

    def health(self) -> Mapping[str, object]:
        """E.g. {"registry": "ok" | "degraded", "last_success": ts, "error": str | None}."""
        ...


@dataclass(frozen=True)
class CompletionRequest:
    """A validated chat request, with the route's system prompt already applied."""

    request_id: str
    route: Route
    messages: tuple[Mapping[str, str], ...]
    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """A finished generation and which backend produced it."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    latency_s: float
    backend: str
    served_model: str  # the model name that actually answered (for the price table)
    attempts: int = 1


@dataclass(frozen=True)
class StreamDelta:
    """One streamed piece of text."""

    text: str


@dataclass
class StreamResult:
    """Filled in when a stream ends."""

    completion: Completion | None = None
    extra: dict[str, object] = field(default_factory=dict)


class BackendError(RuntimeError):
    """A backend failed (after its own retries); the fallback chain may try the next one."""


class QueueFullError(RuntimeError):
    """The local model's bounded queue is full: answer 429 with Retry-After."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the model queue is full; retry after {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class Backend(Protocol):
    """Something that turns a `CompletionRequest` into text."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest, result: StreamResult) -> AsyncIterator[StreamDelta]:
        """Yield deltas; set `result.completion` before the iterator ends."""
        ...

    async def aclose(self) -> None: ...
