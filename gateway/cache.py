"""Response cache: exact match, then semantic (nearest earlier question), per route namespace.

Only deterministic requests (temperature 0) are cached. Entries live under
`Route.cache_namespace` (model + prompt versions), so a promotion or a canary arm
never serves another version's answers.

- Exact: key = namespace + normalised messages (role, whitespace-collapsed content) +
  max_tokens + stop. In memory (LRU + TTL), or in Redis (TTL; Redis's own eviction
  policy bounds its size) when the gateway runs as several processes.
- Semantic: only single-turn requests (system messages + one user message), since
  with earlier turns the same question can need another answer. The user message is
  embedded with the injected `embed` (unit vectors); a hit is the most similar
  earlier question in the same namespace, system prompt and params, at cosine >=
  `semantic_threshold`. In memory only: one matrix per namespace, LRU + TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np
import orjson

from flywheel.settings import CacheParams
from gateway.contracts import Completion, CompletionRequest, FinishReason

logger = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]  # texts -> one unit row each
CacheKind = Literal["exact", "semantic"]


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit replays: the text, its token counts and who first produced it."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    served_model: str
    backend: str

    @classmethod
    def of(cls, completion: Completion) -> CachedAnswer:
        """The cacheable part of a completion."""
        return cls(
            completion.text,
            completion.finish_reason,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.served_model,
            completion.backend,
        )


@dataclass(frozen=True)
class CacheHit:
    """A cached answer and which cache found it."""

    answer: CachedAnswer
    kind: CacheKind


@dataclass
class CacheTicket:
    """What a miss computed (key, embedding) so `store` need not compute it again."""

    exact_key: str | None = None
    space: str | None = None
    vector: np.ndarray | None = None


class ExactStore(Protocol):
    """Where exact-match entries live."""

    async def get(self, key: str) -> CachedAnswer | None: ...

    def put(self, key: str, answer: CachedAnswer) -> None: ...

    async def aclose(self) -> None: ...


@dataclass
class MemoryExactStore:
    """LRU of at most `max_entries`, each living `ttl_s`."""

    max_entries: int
    ttl_s: float
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, tuple[float, CachedAnswer]] = field(default_factory=OrderedDict)

    async def get(self, key: str) -> CachedAnswer | None:
        """The live entry for `key`, refreshed as most recently used."""
        return self.get_now(key)

    def get_now(self, key: str) -> CachedAnswer | None:
        """`get` without the coroutine."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Keep `answer`, evicting the least recently used entry past `max_entries`."""
        self._entries[key] = (self.clock() + self.ttl_s, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        """Nothing to close."""


class RedisExactStore:
    """Exact entries in Redis (`SET ... EX ttl`), shared by every gateway process; misses on Redis errors."""

    def __init__(self, client: object, ttl_s: float, prefix: str = "flywheel:gateway:") -> None:
        from redis.asyncio import Redis

        if not isinstance(client, Redis):
            raise TypeError(f"expected a redis.asyncio.Redis client, got {type(client).__name__}")
        self.client: Redis = client
        self.ttl_s = max(1, round(ttl_s))
        self.prefix = prefix
        self._background: set[asyncio.Task[object]] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}cache:{key}"

    async def get(self, key: str) -> CachedAnswer | None:
        """The entry, or None (also when Redis fails: a cache outage is only a miss)."""
        from redis.exceptions import RedisError

        try:
            raw = await self.client.get(self._key(key))
        except RedisError as error:
            logger.debug("exact cache: Redis get failed: %s", error)
            return None
        return None if raw is None else CachedAnswer(**orjson.loads(raw))

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Write in the background; the response does not wait for Redis."""
        task = asyncio.get_running_loop().create_task(self._put(key, answer))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _put(self, key: str, answer: CachedAnswer) -> None:
        from redis.exceptions import RedisError

        try:
            await self.client.set(self._key(key), orjson.dumps(asdict(answer)), ex=self.ttl_s)
        except RedisError as error:
            logger.debug("exact cache: Redis set failed: %s", error)

    async def aclose(self) -> None:
        """Finish background writes; the client belongs to whoever made it."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class _Space:
    """One namespace's vectors: a growing matrix with free slots, so inserts do not copy everything."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((16, dim), dtype=np.float32)
        self.alive = np.zeros(16, dtype=bool)
        self.answers: list[tuple[float, CachedAnswer] | None] = [None] * 16
        self.free = list(range(15, -1, -1))

    def add(self, vector: np.ndarray, expires: float, answer: CachedAnswer) -> int:
        if not self.free:
            size = len(self.alive)
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
            self.alive = np.concatenate([self.alive, np.zeros(size, dtype=bool)])
            self.answers.extend([None] * size)
            self.free = list(range(2 * size - 1, size - 1, -1))
        slot = self.free.pop()
        self.vectors[slot] = vector
        self.alive[slot] = True
        self.answers[slot] = (expires, answer)
        return slot

    def drop(self, slot: int) -> None:
        if self.alive[slot]:
            self.alive[slot] = False
            self.answers[slot] = None
            self.free.append(slot)


class SemanticIndex:
    """Nearest earlier question per space, at cosine >= threshold; LRU over all spaces, TTL per entry."""

    def __init__(
        self, threshold: float, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold, self.ttl_s, self.max_entries, self.clock = threshold, ttl_s, max_entries, clock
        self._spaces: dict[str, _Space] = {}
        self._lru: OrderedDict[tuple[str, int], None] = OrderedDict()

    def search(self, space: str, vector: np.ndarray) -> CachedAnswer | None:
        """The answer of the most similar live question, if similar enough."""
        index = self._spaces.get(space)
        if index is None or not index.alive.any():
            return None
        scores = index.vectors @ vector
        scores[~index.alive] = -np.inf
        slot = int(np.argmax(scores))
        if scores[slot] < self.threshold:
            return None
        entry = index.answers[slot]
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._forget(space, slot)
            return None
        self._lru.move_to_end((space, slot))
        return entry[1]

    def add(self, space: str, vector: np.ndarray, answer: CachedAnswer) -> None:
        """Remember `answer` for the question embedded as `vector`."""
        index = self._spaces.get(space)
        if index is None:
            index = self._spaces[space] = _Space(vector.shape[0])
        slot = index.add(vector, self.clock() + self.ttl_s, answer)
        self._lru[(space, slot)] = None
        while len(self._lru) > self.max_entries:
            (old_space, old_slot), _ = self._lru.popitem(last=False)
            self._spaces[old_space].drop(old_slot)

    def _forget(self, space: str, slot: int) -> None:
        self._spaces[space].drop(slot)
        self._lru.pop((space, slot), None)

    def __len__(self) -> int:
        return len(self._lru)


def _normalised(content: str) -> str:
    # Collapsing whitespace makes "Hi  there\n" and "Hi there" one entry; nothing else is changed.
    return " ".join(content.split())


def _digest(*parts: object) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


class ResponseCache:
    """Exact then semantic lookup for deterministic requests; `store` after a fresh answer."""

    def __init__(
        self,
        params: CacheParams,
        *,
        embed: Embed | None = None,
        exact_store: ExactStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params = params
        self.embed = embed if params.semantic else None
        self.exact: ExactStore | None = None
        if params.exact:
            self.exact = exact_store or MemoryExactStore(params.max_entries, params.ttl_seconds, clock)
        self.semantic = SemanticIndex(
            params.semantic_threshold, params.ttl_seconds, params.max_entries, clock
        )
        self._last_embed_warning = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any cache is on."""
        return self.exact is not None or self.embed is not None

    async def lookup(self, request: CompletionRequest) -> tuple[CacheHit | None, CacheTicket | None]:
        """A hit, or (None, a ticket for `store`); (None, None) when the request is not cacheable."""
        if request.temperature != 0.0 or not self.enabled:
            return None, None
        ticket = CacheTicket()
        namespace = request.route.cache_namespace
        if self.exact is not None:
            ticket.exact_key = _digest(
                namespace,
                [(m["role"], _normalised(m["content"])) for m in request.messages],
                request.max_tokens,
                request.stop,
            )
            answer = await self.exact.get(ticket.exact_key)
            if answer is not None:
                return CacheHit(answer, "exact"), None
        if self.embed is not None:
            question = _single_question(request)
            if question is not None:
                system = [m["content"] for m in request.messages if m["role"] == "system"]
                ticket.space = _digest(namespace, system, request.max_tokens, request.stop)
                ticket.vector = await self._embed(question)
                if ticket.vector is not None:
                    answer = self.semantic.search(ticket.space, ticket.vector)
                    if answer is not None:
                        return CacheHit(answer, "semantic"), None
        return None, ticket

    async def _embed(self, text: str) -> np.ndarray | None:
        assert self.embed is not None
        try:
            # Embedding takes milliseconds of CPU: off the event loop, so other requests keep moving.
            vectors = await asyncio.to_thread(self.embed, [text])
        except Exception as error:  # any embedder failure is a cache miss, never a failed request
            now = time.monotonic()
            if now - self._last_embed_warning > 30:
                self._last_embed_warning = now
                logger.warning("semantic cache: embedding failed (%s); serving without it", error)
            return None
        vector = np.asarray(vectors, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None

    def store(self, ticket: CacheTicket | None, completion: Completion) -> None:
        """Keep a fresh answer under the ticket's key and embedding; never blocks."""
        if ticket is None:
            return
        answer = CachedAnswer.of(completion)
        if ticket.exact_key is not None and self.exact is not None:
            self.exact.put(ticket.exact_key, answer)
        if ticket.space is not None and ticket.vector is not None:
            self.semantic.add(ticket.space, ticket.vector, answer)

    async def aclose(self) -> None:
        """Finish background writes."""
        if self.exact is not None:
            await self.exact.aclose()


def _single_question(request: CompletionRequest) -> str | None:
    """The user message of a single-turn request (system messages + one user message), else None."""
    question: str | None = None
    for message in request.messages:
        role = message["role"]
        if role == "user":
            if question is not None:
                return None
            question = message["content"]
        elif role != "system":
            return None
    return question
