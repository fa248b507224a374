"""The local backend with SmolLM2 in a model process of its own (the gateway's default)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from flywheel.runtime import load_chat_model
from flywheel.settings import ModelParams
from gateway.backends.local import LocalBackend
from gateway.contracts import BackendError, CompletionRequest, Route, StreamDelta, StreamResult

pytestmark = pytest.mark.integration

T = TypeVar("T")
ROUTE = Route(arm="champion", model_name="SmolLM2", model_version=None)
QUESTION = ({"role": "user", "content": "What is the capital of France? Answer in one sentence."},)


def request(request_id: str, max_tokens: int) -> CompletionRequest:
    return CompletionRequest(request_id=request_id, route=ROUTE, messages=QUESTION, max_tokens=max_tokens)


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


async def collect(deltas: AsyncIterator[StreamDelta]) -> str:
    return "".join([delta.text async for delta in deltas])


def test_the_model_process_answers_streams_cancels_and_survives_a_crash() -> None:
    expected = load_chat_model(ModelParams()).generate(list(QUESTION), max_new_tokens=24)

    async def scenario() -> None:
        backend = LocalBackend("local", ModelParams(), 4, worker="process")
        try:
            # given the backend with its model process warmed up
            await backend.warm(ROUTE)
            first_pid = backend.model_process_pid
            assert first_pid is not None and first_pid != os.getpid(), "the model runs in another process"

            # when it completes a request, then the answer is the runtime's greedy answer
            completion = await backend.complete(request("a", 24))
            assert completion.text == expected.text, f"{completion.text!r} != {expected.text!r}"
            assert completion.completion_tokens == expected.completion_tokens, completion

            # when the same request streams, then the deltas join to the same text
            result = StreamResult()
            streamed = await collect(backend.stream(request("b", 24), result))
            assert streamed == expected.text and result.completion is not None, f"streamed {streamed!r}"
            assert result.completion.ttft_s is not None, "a streamed request has a time to first token"

            # when a long stream is abandoned after its first delta, then the model stops and the
            # next request is served (a generation left running would take ~20 s for 400 tokens)
            abandoned = backend.stream(request("c", 400), StreamResult())
            async for _delta in abandoned:
                break
            await abandoned.aclose()
            after = await asyncio.wait_for(backend.complete(request("d", 4)), timeout=15)
            assert after.completion_tokens == 4, after
            assert backend.inflight == 0, f"every request released its slot: {backend.inflight}"

            # when the model process dies mid-generation, then that request fails as a backend
            # error (the fallback chain's cue) and the next one starts a new process
            running = asyncio.ensure_future(backend.complete(request("e", 400)))
            await asyncio.sleep(1.0)
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(BackendError, match="exited"):
                await asyncio.wait_for(running, timeout=30)
            again = await backend.complete(request("f", 24))
            assert again.text == expected.text, "a new model process answers as the first did"
            assert backend.model_process_pid not in (None, first_pid), "a new process serves"
        finally:
            await backend.aclose()
        assert backend.model_process_pid is None, "aclose() stops the model process"

    run(scenario)
