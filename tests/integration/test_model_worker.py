"""The local backend with SmolLM2 in a model process of its own (the gateway's default)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator

import pytest

from flywheel.settings import ModelParams
from gateway.backends.local import LocalBackend
from gateway.backends.model_worker import ModelWorker, WorkerCancelled
from gateway.contracts import BackendError, CompletionRequest, Route, StreamDelta, StreamResult

pytestmark = pytest.mark.integration

ROUTE = Route(arm="champion", model_name="SmolLM2", model_version=None)
QUESTION = ({"role": "user", "content": "What is the capital of France? Answer in one sentence."},)
# A request that runs for many seconds: what cancelling and crashing need to interrupt.
LONG = ({"role": "user", "content": "Count from 1 to 500, writing every number as a word, one per line."},)


def request(
    request_id: str, max_tokens: int, messages: tuple[dict[str, str], ...] = QUESTION
) -> CompletionRequest:
    return CompletionRequest(request_id=request_id, route=ROUTE, messages=messages, max_tokens=max_tokens)


async def collect(deltas: AsyncIterator[StreamDelta]) -> str:
    return "".join([delta.text async for delta in deltas])


def test_the_model_process_answers_streams_and_survives_a_crash() -> None:
    async def scenario() -> None:
        backend = LocalBackend("local", ModelParams(), 4, worker="process")
        try:
            # given the backend with its model process warmed up
            await backend.warm(ROUTE)
            first_pid = backend.model_process_pid
            assert first_pid is not None and first_pid != os.getpid(), "the model runs in another process"

            # when it completes a request, then the real model answers
            completion = await backend.complete(request("a", 24))
            assert "Paris" in completion.text, f"SmolLM2 knows the capital of France: {completion.text!r}"
            assert completion.completion_tokens > 0 and completion.prompt_tokens > 0, completion

            # when the same request streams, then the deltas join to the same (greedy) text
            result = StreamResult()
            streamed = await collect(backend.stream(request("b", 24), result))
            assert streamed == completion.text, f"streamed {streamed!r} != {completion.text!r}"
            assert result.completion is not None and result.completion.ttft_s is not None, result

            # when a stream is abandoned after its first delta, then its slot is released
            abandoned = backend.stream(request("c", 400, LONG), StreamResult())
            async for _delta in abandoned:
                break
            await abandoned.aclose()
            after = await backend.complete(request("d", 4))
            assert after.completion_tokens == 4, after
            assert backend.inflight == 0, f"every request released its slot: {backend.inflight}"

            # when the model process dies mid-generation, then that request fails as a backend
            # error (the fallback chain's cue) and the next one starts a new process
            dying = backend.stream(request("e", 400, LONG), StreamResult())
            killed = False
            with pytest.raises(BackendError, match="exited"):
                async for _delta in dying:
                    if not killed:  # once it is generating
                        os.kill(first_pid, signal.SIGKILL)
                        killed = True
            again = await backend.complete(request("f", 24))
            assert again.text == completion.text, "a new model process answers as the first did"
            assert backend.model_process_pid not in (None, first_pid), "a new process serves"
        finally:
            await backend.aclose()
        assert backend.model_process_pid is None, "aclose() stops the model process"

    asyncio.run(scenario())


def test_a_cancelled_job_stops_at_its_next_token() -> None:
    # given a model process running a long generation
    worker = ModelWorker("local", ModelParams(), None, max_adapters=1)
    first_chunk = threading.Event()
    try:
        job_id, future = worker.submit(request("long", 400, LONG), on_chunk=lambda _text: first_chunk.set())
        assert first_chunk.wait(120), "the generation should start streaming"
        # when it is cancelled
        worker.cancel(job_id)
        # then it ends as cancelled, not with a 400-token answer
        with pytest.raises(WorkerCancelled):
            future.result(timeout=120)
        # and the process takes the next job
        _, short = worker.submit(request("short", 4))
        assert short.result(timeout=120).completion_tokens == 4
    finally:
        worker.close()
    assert worker.pid is None, "close() ends the model process"
