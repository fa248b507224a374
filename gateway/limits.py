"""Protection: the per-key token rate limit (in memory or shared through Redis) and input limits.

The rate limit is a sliding window of `window_s` seconds made of `buckets` fixed
sub-windows (12 x 5 s by default): a request reserves prompt + max_tokens tokens up
front and `settle` corrects the reservation to what was really used, so a client
that asks for 512 tokens and gets 20 is charged 20. The sub-window form keeps a check
at O(buckets), where a log of every request would grow with traffic; it may admit
up to one sub-window's worth early, which is the price of that.

The in-memory limiter serves one process; `RedisRateLimiter` keeps the same buckets
in one Redis hash per key, checked and charged by one Lua script, so every gateway
process sharing the Redis shares each key's budget. If Redis is down the limiter lets
requests through (and says so in the log): a limiter outage must not become a gateway
outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import ApiError
from gateway.schemas import ChatCompletionRequest

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
BUCKETS = 12


class RateLimitExceeded(Exception):
    """The key's token budget for the window is spent; retry after `retry_after_s`."""

    def __init__(self, key: str, tokens: int, limit: int, retry_after_s: float) -> None:
        if tokens > limit:
            message = (
                f"this request needs up to {tokens} tokens (prompt + max_tokens), more than the limit of "
                f"{limit} tokens per minute for this key; lower max_tokens or shorten the input"
            )
        else:
            message = (
                f"rate limit of {limit} tokens per minute reached for this key; "
                f"retry after {math.ceil(retry_after_s)}s"
            )
        super().__init__(message)
        self.key, self.tokens, self.limit, self.retry_after_s = key, tokens, limit, retry_after_s


@dataclass
class Reservation:
    """Tokens charged to a key's bucket up front; settled to the real use later."""

    key: str
    tokens: int
    bucket: int
    counted: bool = True  # False when the limiter could not count it (Redis down): settle does nothing


class RateLimiter(Protocol):
    """Reserve tokens before a request, settle them after."""

    limit: int

    async def reserve(self, key: str, tokens: int) -> Reservation:
        """Charge `tokens` to `key` or raise `RateLimitExceeded`."""
        ...

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Correct the charge to `used_tokens`; never blocks (Redis work runs in the background)."""
        ...

    async def aclose(self) -> None: ...


def _retry_after(
    buckets: list[tuple[int, int]], total: int, cost: int, limit: int, now: float, size: float, count: int
) -> float:
    """Seconds until enough of the oldest sub-windows leave the window for `cost` to fit."""
    freed = 0
    for index, tokens in sorted(buckets):
        freed += tokens
        if total - freed + cost <= limit:
            return max(0.0, (index + count) * size - now)
    return size * count


@dataclass
class MemoryRateLimiter:
    """Per-key sub-window counters in this process."""

    limit: int
    window_s: float = WINDOW_S
    buckets: int = BUCKETS
    clock: Callable[[], float] = time.time
    _counts: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def _size(self) -> float:
        return self.window_s / self.buckets

    def _live(self, key: str, now: float) -> tuple[dict[int, int], int]:
        counts = self._counts.setdefault(key, {})
        oldest = math.floor(now / self._size) - self.buckets + 1
        for index in [i for i in counts if i < oldest]:
            del counts[index]
        return counts, sum(counts.values())

    async def reserve(self, key: str, tokens: int) -> Reservation:
        """Charge `tokens` to `key` or raise `RateLimitExceeded`."""
        return self.reserve_now(key, tokens)

    def reserve_now(self, key: str, tokens: int) -> Reservation:
        """`reserve` without the coroutine (the in-memory check never waits)."""
        now = self.clock()
        counts, total = self._live(key, now)
        if total + tokens > self.limit:
            wait = _retry_after(
                list(counts.items()), total, tokens, self.limit, now, self._size, self.buckets
            )
            raise RateLimitExceeded(key, tokens, self.limit, wait)
        bucket = math.floor(now / self._size)
        counts[bucket] = counts.get(bucket, 0) + tokens
        return Reservation(key, tokens, bucket)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Correct the charge to `used_tokens` if its sub-window is still in the window."""
        counts = self._counts.get(reservation.key)
        if counts is None or reservation.bucket not in counts or not reservation.counted:
            return
        counts[reservation.bucket] += used_tokens - reservation.tokens
        reservation.tokens = used_tokens

    def used(self, key: str) -> int:
        """Tokens charged to `key` in the current window."""
        return self._live(key, self.clock())[1]

    async def aclose(self) -> None:
        """Nothing to close."""


# KEYS[1]: the key's hash (field = sub-window index, value = tokens).
# ARGV: cost, limit, sub-window seconds, sub-windows per window.
# Returns {admitted 0|1, sub-window index, retry-after in ms}. Uses the server's clock so
# gateways on hosts with skewed clocks still agree on the window.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local size, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = math.floor(now / size)
local oldest = cur - count + 1
local flat = redis.call('HGETALL', KEYS[1])
local total, live = 0, {}
for i = 1, #flat, 2 do
  local index, tokens = tonumber(flat[i]), tonumber(flat[i + 1])
  if index < oldest then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    total = total + tokens
    live[#live + 1] = {index, tokens}
  end
end
if total + cost <= limit then
  redis.call('HINCRBY', KEYS[1], string.format('%d', cur), cost)
  redis.call('EXPIRE', KEYS[1], math.ceil(size * count) + 1)
  return {1, cur, 0}
end
table.sort(live, function(a, b) return a[1] < b[1] end)
local freed = 0
for _, entry in ipairs(live) do
  freed = freed + entry[2]
  if total - freed + cost <= limit then
    return {0, cur, math.ceil(((entry[1] + count) * size - now) * 1000)}
  end
end
return {0, cur, math.ceil(size * count * 1000)}
"""

# KEYS[1]: the key's hash. ARGV: sub-window index, token correction. Only while the sub-window lives.
_SETTLE_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"""


class RedisRateLimiter:
    """The same sub-window limiter, kept in Redis so several gateway processes share each key's budget."""

    def __init__(
        self,
        client: object,
        limit: int,
        *,
        prefix: str = "flywheel:gateway:",
        window_s: float = WINDOW_S,
        buckets: int = BUCKETS,
    ) -> None:
        from redis.asyncio import Redis

        if not isinstance(client, Redis):
            raise TypeError(f"expected a redis.asyncio.Redis client, got {type(client).__name__}")
        self.client: Redis = client
        self.limit = limit
        self.prefix = prefix
        self.window_s, self.buckets = window_s, buckets
        self._reserve = client.register_script(_RESERVE_LUA)
        self._settle = client.register_script(_SETTLE_LUA)
        self._background: set[asyncio.Task[object]] = set()
        self._last_warning = 0.0

    def _key(self, key: str) -> str:
        return f"{self.prefix}ratelimit:{key}"

    def _warn(self, what: str, error: Exception) -> None:
        # At most one line every 30 s: an outage must not flood the log at request rate.
        now = time.monotonic()
        if now - self._last_warning > 30:
            self._last_warning = now
            logger.warning(
                "rate limiter: Redis %s failed (%s); requests pass unlimited meanwhile", what, error
            )

    async def reserve(self, key: str, tokens: int) -> Reservation:
        """Charge `tokens` to `key` in Redis or raise `RateLimitExceeded`."""
        from redis.exceptions import RedisError

        size = self.window_s / self.buckets
        try:
            admitted, bucket, wait_ms = await self._reserve(
                keys=[self._key(key)], args=[tokens, self.limit, size, self.buckets]
            )
        except RedisError as error:
            self._warn("reserve", error)
            return Reservation(key, tokens, 0, counted=False)
        if not admitted:
            raise RateLimitExceeded(key, tokens, self.limit, int(wait_ms) / 1000)
        return Reservation(key, tokens, int(bucket))

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Correct the charge in the background (the response does not wait for Redis)."""
        delta = used_tokens - reservation.tokens
        if not reservation.counted or delta == 0:
            return
        reservation.tokens = used_tokens
        task = asyncio.get_running_loop().create_task(self._settle_now(reservation, delta))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_now(self, reservation: Reservation, delta: int) -> None:
        from redis.exceptions import RedisError

        try:
            await self._settle(keys=[self._key(reservation.key)], args=[reservation.bucket, delta])
        except RedisError as error:
            self._warn("settle", error)

    async def used(self, key: str) -> int:
        """Tokens charged to `key` in the current window (for tests and operators)."""
        values = await self.client.hgetall(self._key(key))  # type: ignore[misc]  # redis stubs: Awaitable | dict
        size = self.window_s / self.buckets
        oldest = math.floor(time.time() / size) - self.buckets + 1
        return sum(int(v) for k, v in values.items() if int(k) >= oldest)

    async def drain(self) -> None:
        """Wait for background settles (shutdown, tests)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish background settles; the client belongs to whoever made it."""
        await self.drain()


def estimate_prompt_tokens(chars: int) -> int:
    """A tokenizer-free upper-ish estimate (4 characters per token, as OpenAI's rule of thumb)."""
    return chars // 4 + 1


def check_input(
    chat: ChatCompletionRequest, *, max_input_chars: int, max_tokens_limit: int, default_max_tokens: int
) -> tuple[int, int]:
    """(input characters, max_tokens) after the input limits; `ApiError` 413/400 naming the limit."""
    chars = sum(len(message.content) for message in chat.messages)
    if chars > max_input_chars:
        raise ApiError(
            413,
            f"the messages hold {chars} characters, "
            f"more than this gateway's max_input_chars={max_input_chars}",
            code="input_too_large",
            param="messages",
        )
    requested = chat.requested_max_tokens
    if requested is not None and requested > max_tokens_limit:
        param = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
        raise ApiError(
            400,
            f"{param}={requested} is above this gateway's max_tokens_limit={max_tokens_limit}",
            code="max_tokens_too_large",
            param=param,
        )
    return chars, requested if requested is not None else min(default_max_tokens, max_tokens_limit)
