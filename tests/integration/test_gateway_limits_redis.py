"""Shared protection on the machine's Redis: two gateways' limiters spend one budget, and share the cache."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flywheel.settings import CacheParams
from gateway.cache import RedisExactStore, ResponseCache
from gateway.contracts import Completion, CompletionRequest
from gateway.limits import RateLimitExceeded, RedisRateLimiter
from tests.conftest import skip_or_fail
from tests.helpers.fake_gateway import route

pytestmark = [pytest.mark.integration, pytest.mark.services]

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test alone; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        skip_or_fail("Redis not reachable at 127.0.0.1:6379")
    name = f"flywheel-test:{uuid.uuid4().hex}:"
    try:
        yield name
    finally:
        keys = list(client.scan_iter(match=f"{name}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_two_limiters_share_one_budget(prefix: str) -> None:
    # given two gateway processes' limiters (separate clients) on one Redis, 100 tokens a minute
    async def scenario() -> tuple[int, RateLimitExceeded, int, int]:
        from redis.asyncio import Redis

        first_client, second_client = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
        first = RedisRateLimiter(first_client, 100, prefix=prefix)
        second = RedisRateLimiter(second_client, 100, prefix=prefix)
        try:
            # when the first spends 70 and the second asks for 40
            reservation = await first.reserve("alice", 70)
            with pytest.raises(RateLimitExceeded) as refused:
                await second.reserve("alice", 40)
            used_before = await second.used("alice")
            # and the first settles its reservation to the 20 it really used
            first.settle(reservation, 20)
            await first.drain()
            await second.reserve("alice", 40)
            used_after = await first.used("alice")
            other_key = (await second.reserve("bob", 100)).tokens
            return used_before, refused.value, used_after, other_key
        finally:
            await first.aclose()
            await second.aclose()
            await first_client.aclose()
            await second_client.aclose()

    used_before, refused, used_after, other_key = asyncio.run(scenario())
    # then the second saw the first's spend, and the settled tokens came back to both
    assert used_before == 70, f"the second limiter sees the first's 70 tokens, saw {used_before}"
    assert 0 < refused.retry_after_s <= 60, f"Retry-After within the window: {refused.retry_after_s}"
    assert used_after == 60, f"20 settled + 40 reserved, saw {used_after}"
    assert other_key == 100, "another key has its own budget"


def test_limiter_lets_requests_through_when_redis_is_down() -> None:
    # given a limiter whose Redis cannot be reached (nothing listens on port 1)
    async def scenario() -> bool:
        from redis.asyncio import Redis

        client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        limiter = RedisRateLimiter(client, 10)
        try:
            reservation = await limiter.reserve("alice", 1000)
            limiter.settle(reservation, 5)
            return reservation.counted
        finally:
            await client.aclose()

    # when a request asks for more than the budget
    counted = asyncio.run(scenario())
    # then it passes uncounted: a limiter outage is not a gateway outage
    assert counted is False, "the reservation is marked as not counted"


def test_exact_cache_is_shared_through_redis(prefix: str) -> None:
    # given two gateways' caches on one Redis
    request = CompletionRequest("chatcmpl-x", route(), ({"role": "user", "content": "opening hours?"},), 32)
    answer = Completion("9 to 5", "stop", 3, 3, None, 0.1, "echo", "echo-model")

    async def scenario() -> str | None:
        from redis.asyncio import Redis

        client_a, client_b = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
        params = CacheParams(semantic=False)
        first = ResponseCache(params, exact_store=RedisExactStore(client_a, params.ttl_seconds, prefix))
        second = ResponseCache(params, exact_store=RedisExactStore(client_b, params.ttl_seconds, prefix))
        try:
            # when the first stores an answer and the second looks the same request up
            _, ticket = await first.lookup(request)
            first.store(ticket, answer)
            await first.aclose()
            hit, _ = await second.lookup(request)
            return None if hit is None else hit.answer.text
        finally:
            await client_a.aclose()
            await client_b.aclose()

    # then the second gets the first's answer
    assert asyncio.run(scenario()) == "9 to 5", "the exact cache is shared across processes"


def test_two_gateway_apps_share_the_rate_limit_over_http(prefix: str) -> None:
    # given two gateway apps wired with `protection` on one Redis, 200 tokens a minute per key
    from fastapi.testclient import TestClient

    from flywheel.settings import GatewayParams
    from gateway.app import GatewayDeps, create_app, protection
    from gateway.auth import ApiKeys
    from gateway.ports import MemorySink
    from tests.helpers.fake_gateway import EchoBackend, StaticRoutes

    params = GatewayParams(rate_limit_tokens_per_minute=200)
    limiters: list[RedisRateLimiter] = []
    clients = []
    for _ in range(2):
        limiter, cache, closers = protection(params, REDIS_URL)
        assert isinstance(limiter, RedisRateLimiter), "Redis-backed when a URL is given"
        assert isinstance(cache.exact, RedisExactStore), "the exact cache too"
        limiter.prefix = cache.exact.prefix = prefix  # this test's keys only
        limiters.append(limiter)
        deps = GatewayDeps(
            routes=StaticRoutes(),
            backend=EchoBackend(),
            sink=MemorySink(),
            application="app",
            keys=ApiKeys.from_pairs([("alice", "sk-alice")]),
            limiter=limiter,
            cache=cache,
            on_close=closers,
        )
        clients.append(TestClient(create_app(params, deps, tune_gc=False)))
    headers = {"Authorization": "Bearer sk-alice"}

    def ask(client: TestClient, max_tokens: int) -> Any:
        body = {"model": "app", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
        return client.post("/v1/chat/completions", json={**body, "temperature": 0.5}, headers=headers)

    with clients[0] as first, clients[1] as second:
        # when the first answers (reserving 150 tokens, settled to the few it used)
        answered = ask(first, 150)
        first.portal.call(limiters[0].drain)  # type: ignore[union-attr]  # the portal exists inside `with`
        used = answered.json()["usage"]["total_tokens"]
        # and the second is asked for a request that fits a fresh budget but not what is left
        refused = ask(second, 200 - used)
        fits = ask(second, 150)
    # then the second gateway refused it, because the budget is one
    assert answered.status_code == 200, answered.text
    assert refused.status_code == 429 and "retry-after" in refused.headers, refused.text
    assert fits.status_code == 200, f"a request within what is left passes: {fits.text}"
