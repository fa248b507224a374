"""The in-memory token rate limiter on a clock the test moves, and the input limits."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import ApiError
from gateway.limits import MemoryRateLimiter, RateLimitExceeded, check_input
from gateway.schemas import ChatCompletionRequest


class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_budget_frees_up_as_the_window_slides() -> None:
    # given a 100-token budget, 80 spent now
    clock = Clock()
    limiter = MemoryRateLimiter(100, clock=clock)
    limiter.reserve_now("alice", 80)
    # when 30 more are asked for at once, and again after the window has passed
    with pytest.raises(RateLimitExceeded) as refused:
        limiter.reserve_now("alice", 30)
    clock.now += 60
    limiter.reserve_now("alice", 30)
    # then the first is refused with the wait until the spend leaves the window, the second passes
    assert 55 <= refused.value.retry_after_s <= 60, f"retry after {refused.value.retry_after_s}"
    assert limiter.used("alice") == 30, "only the new spend counts"


def test_keys_have_separate_budgets() -> None:
    # given one key's budget spent
    limiter = MemoryRateLimiter(100, clock=Clock())
    limiter.reserve_now("alice", 100)
    # when another key asks
    limiter.reserve_now("bob", 100)
    # then it has its own budget
    assert (limiter.used("alice"), limiter.used("bob")) == (100, 100), "budgets are per key"


def test_settle_charges_what_was_used() -> None:
    # given a reservation of 90 tokens of which 10 were used
    limiter = MemoryRateLimiter(100, clock=Clock())
    reservation = limiter.reserve_now("alice", 90)
    limiter.settle(reservation, 10)
    # when another 90 are asked for
    limiter.reserve_now("alice", 90)
    # then it fits, because only 10 were charged
    assert limiter.used("alice") == 100, "10 used + 90 reserved"


def test_settle_after_the_window_left_is_ignored() -> None:
    # given a reservation whose sub-window has left the window
    clock = Clock()
    limiter = MemoryRateLimiter(100, clock=clock)
    reservation = limiter.reserve_now("alice", 90)
    clock.now += 120
    # when it is settled
    limiter.settle(reservation, 10)
    # then nothing goes negative or comes back
    assert limiter.used("alice") == 0, "an old reservation changes nothing"


def test_a_request_bigger_than_the_budget_says_so() -> None:
    # given a budget smaller than the request
    limiter = MemoryRateLimiter(100, clock=Clock())
    # when it asks
    with pytest.raises(RateLimitExceeded) as refused:
        asyncio.run(limiter.reserve("alice", 150))
    # then the message says it can never fit
    assert "more than the limit" in str(refused.value), str(refused.value)


def _chat(content: str, **fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    )


@pytest.mark.parametrize(
    ("content", "fields", "expected"),
    [
        ("hello", {}, (5, 64)),
        ("hello", {"max_tokens": 100}, (5, 100)),
        ("hello", {"max_completion_tokens": 7, "max_tokens": 100}, (5, 7)),
    ],
    ids=["default", "max_tokens", "max_completion_tokens-wins"],
)
def test_check_input_passes(content: str, fields: dict[str, object], expected: tuple[int, int]) -> None:
    # when a request within the limits is checked
    result = check_input(
        _chat(content, **fields), max_input_chars=10, max_tokens_limit=512, default_max_tokens=64
    )
    # then it gets its size and max_tokens
    assert result == expected, result


@pytest.mark.parametrize(
    ("content", "fields", "status", "param"),
    [
        ("x" * 11, {}, 413, "messages"),
        ("hi", {"max_tokens": 513}, 400, "max_tokens"),
        ("hi", {"max_completion_tokens": 513}, 400, "max_completion_tokens"),
    ],
    ids=["too-long", "max_tokens", "max_completion_tokens"],
)
def test_check_input_refuses(content: str, fields: dict[str, object], status: int, param: str) -> None:
    # when a request over a limit is checked
    with pytest.raises(ApiError) as refused:
        check_input(_chat(content, **fields), max_input_chars=10, max_tokens_limit=512, default_max_tokens=64)
    # then the error has the status and names the field
    assert (refused.value.status, refused.value.param) == (status, param), refused.value.message
