"""The response cache on its own: what is cacheable, LRU, TTL, namespaces, semantic matching."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from flywheel.settings import CacheParams
from gateway.cache import MemoryExactStore, ResponseCache, SemanticIndex
from gateway.contracts import Completion, CompletionRequest
from tests.helpers.fake_gateway import BagOfWordsEmbedder, route


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _request(question: str, *, version: str = "1", temperature: float = 0.0, **kw: Any) -> CompletionRequest:
    messages = kw.pop("messages", ({"role": "user", "content": question},))
    return CompletionRequest("chatcmpl-x", route(version=version), messages, 32, temperature, **kw)


def _completion(text: str) -> Completion:
    return Completion(text, "stop", 3, 4, None, 0.01, "echo", "echo-model")


def _round_trip(cache: ResponseCache, first: CompletionRequest, second: CompletionRequest) -> Any:
    """Store an answer for `first`, then look up `second`."""

    async def scenario() -> Any:
        hit, ticket = await cache.lookup(first)
        assert hit is None, "the first lookup misses"
        cache.store(ticket, _completion("cached answer"))
        return (await cache.lookup(second))[0]

    return asyncio.run(scenario())


def test_exact_hit_ignores_whitespace_but_not_params() -> None:
    # given an exact cache
    cache = ResponseCache(CacheParams(semantic=False))
    # when the same question comes with other spacing, and with another max_tokens
    same = _round_trip(cache, _request("Opening  hours?"), _request(" Opening hours? "))
    other = asyncio.run(
        cache.lookup(CompletionRequest("x", route(), ({"role": "user", "content": "Opening hours?"},), 64))
    )
    # then the first hits and the second misses
    assert same is not None and same.kind == "exact", same
    assert same.answer.text == "cached answer", same
    assert other[0] is None, "max_tokens is part of the key"


def test_other_namespace_misses() -> None:
    # when the same question is asked of another model version
    hit = _round_trip(ResponseCache(CacheParams(semantic=False)), _request("hi"), _request("hi", version="2"))
    # then it misses
    assert hit is None, "a namespace is a model+prompt version"


def test_sampled_requests_are_not_cacheable() -> None:
    # when a request has temperature > 0
    hit, ticket = asyncio.run(ResponseCache(CacheParams()).lookup(_request("hi", temperature=0.7)))
    # then there is nothing to look up or store
    assert (hit, ticket) == (None, None), "only temperature 0 is cached"


def test_exact_store_evicts_least_recently_used_and_expires() -> None:
    # given a store of two entries living 10 s
    clock = Clock()
    store = MemoryExactStore(max_entries=2, ttl_s=10, clock=clock)
    store.put("a", _cached("A"))
    store.put("b", _cached("B"))
    store.get_now("a")  # a is now the most recently used
    # when a third arrives, and later time passes
    store.put("c", _cached("C"))
    kept = [k for k in "abc" if store.get_now(k) is not None]
    clock.now = 11
    # then b was evicted, and everything expires
    assert kept == ["a", "c"], kept
    assert store.get_now("a") is None and len(store) == 1, "expired entries are gone when read"


def _cached(text: str) -> Any:
    from gateway.cache import CachedAnswer

    return CachedAnswer.of(_completion(text))


def test_semantic_hit_needs_the_threshold_and_a_single_turn() -> None:
    # given a semantic cache with a bag-of-words embedder
    cache = ResponseCache(CacheParams(exact=False, semantic_threshold=0.9), embed=BagOfWordsEmbedder())
    # when a reordering, an unrelated question, and a multi-turn conversation come
    near = _round_trip(cache, _request("capital of France"), _request("France capital of"))
    far = asyncio.run(cache.lookup(_request("reset my password")))[0]
    turns = (
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "capital of France"},
    )
    multi = asyncio.run(cache.lookup(_request("", messages=turns)))
    # then only the reordering hits, and the conversation is not even embedded
    assert near is not None and near.kind == "semantic", near
    assert far is None, "an unrelated question misses"
    assert multi == (None, multi[1]) and multi[1] is not None and multi[1].vector is None, (
        "no semantic lookup"
    )


def test_semantic_index_lru_across_namespaces() -> None:
    # given an index of two entries
    index = SemanticIndex(threshold=0.99, ttl_s=100, max_entries=2)
    a, b, c = np.eye(3, dtype=np.float32)
    index.add("ns1", a, _cached("A"))
    index.add("ns2", b, _cached("B"))
    # when a third entry arrives
    index.add("ns1", c, _cached("C"))
    # then the oldest is evicted and the others are found in their own namespace only
    assert index.search("ns1", a) is None, "the oldest entry was evicted"
    assert index.search("ns2", b) is not None and index.search("ns1", b) is None, "namespaces are separate"
    assert index.search("ns1", c) is not None and len(index) == 2, "the newest is kept"


def test_semantic_index_grows_past_its_first_block() -> None:
    # given many distinct entries in one namespace
    index = SemanticIndex(threshold=0.99, ttl_s=100, max_entries=1000)
    vectors = np.eye(40, dtype=np.float32)
    for i, vector in enumerate(vectors):
        index.add("ns", vector, _cached(str(i)))
    # when each is searched
    found = [index.search("ns", vector) for vector in vectors]
    # then each finds its own answer
    assert [f.text if f else None for f in found] == [str(i) for i in range(40)], "every entry is found"


def test_embedder_failure_is_a_miss() -> None:
    # given an embedder that fails
    def broken(texts: Any) -> np.ndarray:
        raise RuntimeError("model not loaded")

    cache = ResponseCache(CacheParams(exact=False), embed=broken)
    # when a request is looked up
    hit, ticket = asyncio.run(cache.lookup(_request("hi")))
    # then it misses and nothing is stored semantically
    assert hit is None and ticket is not None and ticket.vector is None, (
        "a broken embedder only disables the hit"
    )
