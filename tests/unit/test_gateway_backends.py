"""Gateway backends: the local model behind its queue, an OpenAI-compatible server, and the fallback chain."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import torch
from aiohttp import web

from flywheel.runtime import ChatModel, GenerationStream
from flywheel.settings import BackendParams, GatewayParams, ModelParams
from gateway.backends import (
    BackendConfigError,
    FallbackChain,
    LocalBackend,
    MlflowAdapterResolver,
    OpenAICompatBackend,
    build_backends,
)
from gateway.contracts import (
    BackendError,
    Completion,
    CompletionRequest,
    QueueFullError,
    Route,
    StreamDelta,
    StreamResult,
)
from tests.helpers.tiny_llm import build_tiny_chat_model

T = TypeVar("T")

ROUTE = Route(arm="champion", model_name="support-model", model_version=None)
QUESTION = ({"role": "user", "content": "How do I reset my password?"},)
REPLY_WORDS = ["Open ", "Settings, ", "then ", "Security."]


def request(max_tokens: int = 12, route: Route = ROUTE, request_id: str = "r1") -> CompletionRequest:
    """A chat request for the tests."""
    return CompletionRequest(request_id=request_id, route=route, messages=QUESTION, max_tokens=max_tokens)


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async scenario on a fresh event loop."""
    return asyncio.run(scenario())


async def until(condition: Callable[[], bool], what: str, tries: int = 3000) -> None:
    """Yield to the loop until `condition` holds (bounded, so a bug fails instead of hanging)."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for: {what}")


async def collect(deltas: Any) -> str:
    """All streamed text."""
    return "".join([delta.text async for delta in deltas])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from more threads; restore the setting afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# -- the local backend -----------------------------------------------------------------


class SpyChat(ChatModel):
    """The tiny chat model, with a gate in front of generation and a record of its streams."""

    def __init__(self, base: ChatModel) -> None:
        super().__init__(base.tokenizer, base.model, name="spy")
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.gate_was_opened: list[bool] = []
        self.streams: list[GenerationStream] = []

    def stream(self, messages: Any, **kwargs: Any) -> GenerationStream:
        """Wait at the gate (recording whether it opened), then stream as the runtime does."""
        self.entered.set()
        self.gate_was_opened.append(self.gate.wait(60))
        stream = super().stream(messages, **kwargs)
        self.streams.append(stream)
        return stream


def local_backend(chat: ChatModel, max_queue: int = 4) -> LocalBackend:
    """A local backend whose loader returns `chat` instead of loading SmolLM2."""
    return LocalBackend("local", ModelParams(), max_queue, loader=lambda params, adapter: chat)


def test_local_complete_answers_with_the_model() -> None:
    # given a local backend over the tiny model
    chat = build_tiny_chat_model(seed=0)
    expected = chat.generate(list(QUESTION), max_new_tokens=12)
    backend = local_backend(chat)

    # when a request is completed
    completion = run(lambda: backend.complete(request(max_tokens=12)))

    # then it is the model's greedy answer with its token counts, served by this backend
    assert completion.text == expected.text, f"same text as the runtime: {completion.text!r}"
    assert completion.completion_tokens == 12, f"the tiny model runs to max_tokens: {completion}"
    assert completion.prompt_tokens == expected.prompt_tokens, f"prompt tokens: {completion}"
    assert completion.finish_reason == "length", f"ran out of tokens: {completion}"
    assert completion.backend == "local", f"backend name: {completion}"
    assert completion.served_model == "SmolLM2-135M-Instruct.Q4_1", f"base model name: {completion}"
    assert completion.ttft_s is not None and completion.ttft_s <= completion.latency_s, f"times: {completion}"


def test_local_stream_yields_the_same_text_and_sets_the_result() -> None:
    # given a local backend over the tiny model
    chat = build_tiny_chat_model(seed=0)
    expected = chat.generate(list(QUESTION), max_new_tokens=20)
    backend = local_backend(chat)
    result = StreamResult()

    # when a request is streamed
    text = run(lambda: collect(backend.stream(request(max_tokens=20), result)))

    # then the deltas concatenate to the answer and the result is filled in
    assert text == expected.text, f"streamed text {text!r} != {expected.text!r}"
    assert result.completion is not None, "the stream sets result.completion"
    assert result.completion.text == expected.text, f"result text: {result.completion}"
    assert result.completion.completion_tokens == 20, f"tokens: {result.completion}"
    assert result.completion.ttft_s is not None, f"ttft at the first delta: {result.completion}"


def test_local_queue_full_raises_with_retry_after() -> None:
    # given a backend with room for one waiting request, its model held busy by a first one
    chat = SpyChat(build_tiny_chat_model(seed=0))
    chat.gate.clear()
    backend = local_backend(chat, max_queue=1)

    async def scenario() -> tuple[QueueFullError, QueueFullError, list[Completion]]:
        running = asyncio.create_task(backend.complete(request(request_id="running")))
        await until(chat.entered.is_set, "the first request reaches the model")
        waiting = asyncio.create_task(backend.complete(request(request_id="waiting")))
        await until(lambda: backend.inflight == 2, "the second request is queued")

        # when a third request arrives, completing or streaming
        with pytest.raises(QueueFullError) as completing:
            await backend.complete(request(request_id="third"))
        with pytest.raises(QueueFullError) as streaming:
            await collect(backend.stream(request(request_id="fourth"), StreamResult()))
        chat.gate.set()
        return completing.value, streaming.value, list(await asyncio.gather(running, waiting))

    completing, streaming, answered = run(scenario)

    # then it is refused with a Retry-After, while the admitted ones are answered
    for error in (completing, streaming):
        assert error.retry_after_s >= 1, f"Retry-After of at least a second: {error.retry_after_s}"
    assert len(answered) == 2, f"running and waiting requests both finish: {answered}"
    assert backend.inflight == 0, f"all slots released: {backend.inflight}"


def test_local_generation_does_not_block_the_event_loop() -> None:
    # given a model that waits, inside generation, for a gate only the event loop opens
    chat = SpyChat(build_tiny_chat_model(seed=0))
    chat.gate.clear()
    backend = local_backend(chat)

    async def scenario() -> Completion:
        task = asyncio.create_task(backend.complete(request()))
        # when another coroutine runs while the request is inside the model
        await until(chat.entered.is_set, "the request reaches the model")
        chat.gate.set()  # only reachable if the loop is free while the model works
        return await task

    completion = run(scenario)

    # then the loop opened the gate during the generation, and the answer came back
    assert chat.gate_was_opened == [True], f"the loop progressed during generation: {chat.gate_was_opened}"
    assert completion.completion_tokens == 12, f"the request still completed: {completion}"


def test_cancelled_stream_stops_the_generation() -> None:
    # given a model whose forward passes pause after the first few, until the test releases them
    chat = SpyChat(build_tiny_chat_model(seed=0))
    generating = threading.Event()
    release = threading.Event()
    steps = [0]

    def pause(module: torch.nn.Module, args: Any) -> None:
        steps[0] += 1
        if steps[0] == 3:
            generating.set()
            release.wait(60)

    hook = chat.model.register_forward_pre_hook(pause)
    backend = local_backend(chat)

    async def scenario() -> Completion:
        consumer = asyncio.create_task(collect(backend.stream(request(max_tokens=400), StreamResult())))
        await until(generating.is_set, "generation is under way")
        # when the client goes away mid-generation
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await until(lambda: chat.streams[0].cancelled, "the stream is told to stop")
        release.set()
        # the single worker takes the next request only after the cancelled one ended
        return await backend.complete(request(max_tokens=3))

    try:
        after = run(scenario)
    finally:
        hook.remove()

    # then the generation stopped long before max_tokens, and the model serves the next request
    stopped = chat.streams[0].result
    assert chat.streams[0].cancelled, "the runtime stream was cancelled"
    assert stopped.completion_tokens < 400, f"generation stopped early: {stopped.completion_tokens} tokens"
    assert after.completion_tokens == 3, f"next request served normally: {after}"
    assert backend.inflight == 0, f"the cancelled request released its slot: {backend.inflight}"


def test_closing_the_local_backend_fails_running_and_waiting_requests_cleanly() -> None:
    # given one request inside the model and one waiting behind it
    chat = SpyChat(build_tiny_chat_model(seed=0))
    chat.gate.clear()
    backend = local_backend(chat)

    async def scenario() -> list[BaseException | Completion]:
        running = asyncio.create_task(backend.complete(request(request_id="running")))
        await until(chat.entered.is_set, "the first request reaches the model")
        waiting = asyncio.create_task(backend.complete(request(request_id="waiting")))
        await until(lambda: backend.inflight == 2, "the second request is queued")
        # when the backend is closed (gateway shutdown)
        await backend.aclose()
        chat.gate.set()
        outcomes = await asyncio.gather(running, waiting, return_exceptions=True)
        try:
            await backend.complete(request(request_id="late"))
        except BackendError as error:
            outcomes.append(error)
        return list(outcomes)

    outcomes = run(scenario)

    # then every caller gets a BackendError (not a stray cancellation) and nothing is left running
    kinds = [type(outcome).__name__ for outcome in outcomes]
    assert kinds == ["BackendError"] * 3, f"running, waiting and late requests fail cleanly: {outcomes}"
    assert backend.inflight == 0, f"all slots released: {backend.inflight}"


def test_local_routes_with_an_adapter_load_it_through_the_resolver(tmp_path: Path) -> None:
    # given a resolver that maps the route's adapter URI to a folder, and a recording loader
    adapter_route = Route(
        arm="challenger", model_name="support-model", model_version="3", adapter_uri="models:/support-model/3"
    )
    chat = build_tiny_chat_model(seed=0)
    loads: list[Path | None] = []

    def loader(params: ModelParams, adapter: Path | None) -> ChatModel:
        loads.append(adapter)
        return chat

    backend = LocalBackend("local", ModelParams(), 4, lambda route: tmp_path / "v3", loader=loader)

    # when the route is warmed and then served twice, and the base route once
    async def scenario() -> None:
        await backend.warm(adapter_route)
        await backend.complete(request(route=adapter_route))
        await backend.complete(request(route=adapter_route))
        await backend.complete(request())

    run(scenario)

    # then the adapter model is loaded once (by warm) and the base model once
    assert loads == [tmp_path / "v3", None], f"one load per model, warm first: {loads}"


def test_adapter_resolver_downloads_once_and_finds_a_nested_adapter(tmp_path: Path) -> None:
    # given a download that writes an adapter one folder down (as a logged model's artifacts may)
    downloads: list[str] = []

    def download(uri: str, dst: Path) -> Path:
        downloads.append(uri)
        (dst / "adapter").mkdir(parents=True)
        (dst / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        return dst

    resolver = MlflowAdapterResolver(tmp_path / "adapters", download=download)
    route = Route(
        arm="champion", model_name="support-model", model_version="3", adapter_uri="models:/support-model/3"
    )

    # when the route's adapter is resolved twice, and a base route once
    first = resolver(route)
    second = resolver(route)
    base = resolver(ROUTE)

    # then it is downloaded once into <cache>/<model>/<version> and the adapter folder is found
    assert downloads == ["models:/support-model/3"], f"one download: {downloads}"
    assert first == tmp_path / "adapters" / "support-model" / "3" / "adapter", f"adapter folder: {first}"
    assert second == first, f"cached: {second}"
    assert base is None, "the base model needs no adapter"


def test_adapter_resolver_leaves_nothing_behind_when_the_download_fails(tmp_path: Path) -> None:
    # given a download that fails half-way
    def download(uri: str, dst: Path) -> Path:
        dst.mkdir(parents=True)
        (dst / "partial").write_text("x")
        raise OSError("connection reset")

    resolver = MlflowAdapterResolver(tmp_path, download=download)
    route = Route(arm="champion", model_name="m", model_version="1", adapter_uri="models:/m/1")

    # when the adapter is resolved
    with pytest.raises(OSError, match="connection reset"):
        resolver(route)

    # then no partial folder is left to be mistaken for a complete one
    assert list((tmp_path / "m").iterdir()) == [], f"no leftovers: {list((tmp_path / 'm').iterdir())}"


# -- an OpenAI-compatible server, in-process --------------------------------------------------


class StubOpenAI:
    """A minimal OpenAI-compatible /v1/chat/completions on a free loopback port, in its own thread."""

    def __init__(self) -> None:
        self.hits = 0
        self.failures: list[int] = []  # statuses to answer, in order, before succeeding
        self.hold = False  # answer only when the test (or stop) releases the request
        self.usage = True
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> StubOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._socket).start())
        self._thread.start()
        return self

    def stop(self) -> None:
        assert self._runner is not None
        self._loop.call_soon_threadsafe(self._released.set)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _handle(self, http: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await http.json()
        self.bodies.append(body)
        self.headers.append(dict(http.headers))
        if self.failures:
            status = self.failures.pop(0)
            return web.json_response({"error": {"message": f"stub {status}"}}, status=status)
        if self.hold:
            await self._released.wait()
        usage = {"prompt_tokens": 11, "completion_tokens": len(REPLY_WORDS), "total_tokens": 15}
        if not body.get("stream"):
            answer: dict[str, Any] = {
                "id": "cmpl-1",
                "object": "chat.completion",
                "model": "stub-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
                        "finish_reason": "stop",
                    }
                ],
            }
            if self.usage:
                answer["usage"] = usage
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(http)
        await response.write(b": keep-alive\n\n")
        for index, word in enumerate(REPLY_WORDS):
            last = index == len(REPLY_WORDS) - 1
            chunk = {
                "model": "stub-model",
                "choices": [
                    {"index": 0, "delta": {"content": word}, "finish_reason": "length" if last else None}
                ],
            }
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if self.usage:
            await response.write(
                b"data: " + orjson.dumps({"model": "stub-model", "choices": [], "usage": usage}) + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture
def stub() -> Iterator[StubOpenAI]:
    """A fresh stub server per test."""
    server = StubOpenAI().start()
    yield server
    server.stop()


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def remote(
    base_url: str, retries: int = 2, timeout_s: float = 10.0, name: str = "remote"
) -> OpenAICompatBackend:
    """An OpenAI-compatible backend with a tiny backoff, so retries are quick."""
    return OpenAICompatBackend(name, base_url, "sk-test", "served-model", timeout_s, retries, backoff_s=0.01)


def complete_and_close(backend: Any, req: CompletionRequest) -> Completion:
    """Complete one request and close the backend's connections on the same loop."""

    async def scenario() -> Completion:
        try:
            return await backend.complete(req)
        finally:
            await backend.aclose()

    return run(scenario)


def stream_and_close(backend: Any, req: CompletionRequest) -> tuple[list[StreamDelta], StreamResult]:
    """Stream one request to the end and close the backend."""
    result = StreamResult()

    async def scenario() -> list[StreamDelta]:
        try:
            return [delta async for delta in backend.stream(req, result)]
        finally:
            await backend.aclose()

    return run(scenario), result


def test_remote_complete_sends_an_openai_request_and_reads_the_answer(stub: StubOpenAI) -> None:
    # given a backend pointed at the stub; when a request is completed
    completion = complete_and_close(remote(stub.base_url), request(max_tokens=7))

    # then the request is OpenAI's format with our model and key, and the answer is read back
    sent = stub.bodies[0]
    assert sent["model"] == "served-model", f"configured model name sent: {sent}"
    assert sent["messages"] == list(QUESTION), f"messages sent as given: {sent}"
    assert sent["max_tokens"] == 7 and "stream" not in sent, f"non-streaming with max_tokens: {sent}"
    assert stub.headers[0].get("Authorization") == "Bearer sk-test", f"API key sent: {stub.headers[0]}"
    assert completion.text == "".join(REPLY_WORDS), f"answer text: {completion}"
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 4), f"usage: {completion}"
    assert completion.served_model == "stub-model", f"the server's model name: {completion}"
    assert completion.attempts == 1, f"one attempt: {completion}"


def test_remote_stream_yields_deltas_and_usage_from_the_final_chunk(stub: StubOpenAI) -> None:
    # given a backend pointed at the stub; when a request is streamed
    deltas, result = stream_and_close(remote(stub.base_url), request())

    # then each SSE content chunk is a delta and the final chunk's usage is used
    assert [d.text for d in deltas] == REPLY_WORDS, f"deltas: {deltas}"
    assert stub.bodies[0]["stream"] is True, f"asked for a stream: {stub.bodies[0]}"
    assert result.completion is not None, "the stream sets result.completion"
    assert result.completion.text == "".join(REPLY_WORDS), f"text: {result.completion}"
    assert result.completion.finish_reason == "length", f"finish reason from the stream: {result.completion}"
    assert result.completion.completion_tokens == 4, f"usage from the final chunk: {result.completion}"
    assert result.completion.ttft_s is not None, f"ttft at the first delta: {result.completion}"
    assert "usage_estimated" not in result.extra, f"usage was reported: {result.extra}"


def test_remote_without_usage_estimates_and_says_so(stub: StubOpenAI) -> None:
    # given a server that reports no usage
    stub.usage = False

    # when a request is streamed and another completed
    _deltas, result = stream_and_close(remote(stub.base_url), request())
    completion = complete_and_close(remote(stub.base_url), request())

    # then counts are estimated, and the stream result says so
    assert result.completion is not None and result.completion.completion_tokens == 4, (
        f"one per delta: {result}"
    )
    assert result.extra.get("usage_estimated") is True, f"estimate flagged: {result.extra}"
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0, (
        f"estimated counts: {completion}"
    )


@pytest.mark.parametrize("status", [503, 429, 500])
def test_remote_retries_a_retryable_status_then_succeeds(stub: StubOpenAI, status: int) -> None:
    # given a server that fails once with a retryable status
    stub.failures = [status]

    # when a request is completed
    completion = complete_and_close(remote(stub.base_url, retries=2), request())

    # then the second attempt answers
    assert completion.text == "".join(REPLY_WORDS), f"answered after a retry: {completion}"
    assert completion.attempts == 2, f"two attempts: {completion}"
    assert stub.hits == 2, f"the server saw two requests: {stub.hits}"


def test_remote_stream_retries_before_the_first_byte(stub: StubOpenAI) -> None:
    # given a server that fails once before streaming
    stub.failures = [503]

    # when a request is streamed
    deltas, result = stream_and_close(remote(stub.base_url, retries=1), request())

    # then the retry streams the whole answer
    assert [d.text for d in deltas] == REPLY_WORDS, f"complete stream after a retry: {deltas}"
    assert result.completion is not None and result.completion.attempts == 2, f"two attempts: {result}"


def test_remote_retries_are_bounded_then_backend_error(stub: StubOpenAI) -> None:
    # given a server that keeps answering 503
    stub.failures = [503] * 10

    # when a request is completed with 2 retries
    with pytest.raises(BackendError, match="3 attempt") as raised:
        complete_and_close(remote(stub.base_url, retries=2), request())

    # then exactly 1 + 2 attempts were made
    assert stub.hits == 3, f"one try and two retries: {stub.hits}"
    assert "HTTP 503" in str(raised.value), f"the last failure is named: {raised.value}"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_remote_client_errors_are_not_retried(stub: StubOpenAI, status: int) -> None:
    # given a server that refuses the request
    stub.failures = [status]

    # when a request is completed
    with pytest.raises(BackendError, match=f"HTTP {status}"):
        complete_and_close(remote(stub.base_url, retries=3), request())

    # then it was tried once
    assert stub.hits == 1, f"a {status} is not retried: {stub.hits} hits"


def test_remote_timeout_is_a_backend_error(stub: StubOpenAI) -> None:
    # given a server that does not answer within the backend's timeout
    stub.hold = True

    # when a request is completed
    with pytest.raises(BackendError, match=r"within 0\.2s"):
        complete_and_close(remote(stub.base_url, retries=2, timeout_s=0.2), request())

    # then the timeout was not retried
    assert stub.hits == 1, f"a timeout is not retried: {stub.hits} hits"


def test_remote_connection_refused_is_retried_then_backend_error() -> None:
    # given a URL where nothing listens; when a request is completed
    with pytest.raises(BackendError, match="3 attempt"):
        complete_and_close(remote(dead_url(), retries=2), request())


# -- the fallback chain -------------------------------------------------------------------------


def test_chain_falls_through_a_dead_backend_to_the_next(stub: StubOpenAI) -> None:
    # given a chain whose first backend is down and whose second is the stub
    chain = FallbackChain([remote(dead_url(), retries=1, name="dead"), remote(stub.base_url, name="alive")])

    # when a request is completed
    completion = complete_and_close(chain, request())

    # then the second backend answers, and attempts count the dead one's tries
    assert completion.backend == "alive", f"served by the live backend: {completion}"
    assert completion.attempts == 3, f"2 tries at the dead backend + 1: {completion}"
    assert stub.hits == 1, f"the live backend was called once: {stub.hits}"


def test_chain_stream_falls_through_before_the_first_delta(stub: StubOpenAI) -> None:
    # given a chain whose first backend is down
    chain = FallbackChain([remote(dead_url(), retries=0, name="dead"), remote(stub.base_url, name="alive")])

    # when a request is streamed
    deltas, result = stream_and_close(chain, request())

    # then the live backend streams the answer and the failure is recorded
    assert [d.text for d in deltas] == REPLY_WORDS, f"streamed by the live backend: {deltas}"
    assert result.completion is not None and result.completion.backend == "alive", f"result: {result}"
    assert "dead" in str(result.extra.get("fallback_errors")), f"failure recorded: {result.extra}"


def test_chain_retries_stay_bounded_when_everything_fails(stub: StubOpenAI) -> None:
    # given two backends on the same failing server, each allowed 1 retry
    stub.failures = [503] * 20
    chain = FallbackChain(
        [remote(stub.base_url, retries=1, name="a"), remote(stub.base_url, retries=1, name="b")]
    )

    # when a request is completed
    with pytest.raises(BackendError, match="every backend failed"):
        complete_and_close(chain, request())

    # then each backend tried twice, no more
    assert stub.hits == 4, f"2 backends x (1 try + 1 retry): {stub.hits}"


class FullLocal:
    """A backend whose queue is always full."""

    name = "local"

    async def complete(self, request: CompletionRequest) -> Completion:
        raise QueueFullError(3.0)

    async def stream(self, request: CompletionRequest, result: StreamResult) -> Any:
        raise QueueFullError(3.0)
        yield  # an async generator, like the real backends

    async def aclose(self) -> None:
        return None


def test_chain_sends_overflow_from_a_full_local_queue_to_a_remote(stub: StubOpenAI) -> None:
    # given a full local backend followed by a remote one
    chain = FallbackChain([FullLocal(), remote(stub.base_url, name="alive")])

    # when a request is completed
    completion = complete_and_close(chain, request())

    # then the remote takes it
    assert completion.backend == "alive", f"overflow served remotely: {completion}"


def test_chain_reraises_queue_full_when_nothing_is_behind_it() -> None:
    # given a chain of only a full local backend
    chain = FallbackChain([FullLocal()])

    # when a request is completed or streamed, then the client is told to retry later
    with pytest.raises(QueueFullError) as completing:
        complete_and_close(chain, request())
    with pytest.raises(QueueFullError):
        stream_and_close(chain, request())
    assert completing.value.retry_after_s == 3.0, f"the backend's Retry-After: {completing.value}"


# -- building from params -------------------------------------------------------------------------


def test_build_backends_follows_the_fallback_order_and_reads_the_environment() -> None:
    # given a remote and a local backend, remote first in the fallback order
    params = GatewayParams(
        backends=(
            BackendParams(name="local", kind="local"),
            BackendParams(
                name="vllm", kind="openai", base_url_env="VLLM_URL", api_key_env="VLLM_KEY", model="m"
            ),
        ),
        fallback=("vllm", "local"),
        retries=3,
    )
    env = {"VLLM_URL": "http://vllm:8000/v1/", "VLLM_KEY": "secret"}

    # when the chain is built
    chain = build_backends(params, ModelParams(), env.get, adapter_resolver=lambda route: None)

    # then it holds both, in order, configured from params and environment
    names = [b.name for b in chain.backends]
    assert names == ["vllm", "local"], f"fallback order: {names}"
    vllm = chain.backend("vllm")
    assert isinstance(vllm, OpenAICompatBackend), f"openai kind: {vllm!r}"
    assert vllm.url == "http://vllm:8000/v1/chat/completions", f"URL from the variable: {vllm.url}"
    assert vllm.retries == 3, f"retries from params: {vllm.retries}"
    assert isinstance(chain.backend("local"), LocalBackend), "local kind"


def test_build_backends_names_every_missing_variable() -> None:
    # given two remote backends whose variables are not set
    params = GatewayParams(
        backends=(
            BackendParams(name="vllm", kind="openai", base_url_env="VLLM_URL"),
            BackendParams(name="hosted", kind="openai", base_url_env="HOSTED_URL", api_key_env="HOSTED_KEY"),
        ),
        fallback=("vllm", "hosted"),
    )
    env: dict[str, str] = {"HOSTED_URL": "https://api.example/v1"}

    # when the chain is built, then the error names each missing variable and its backend
    with pytest.raises(BackendConfigError) as raised:
        build_backends(params, ModelParams(), env.get, adapter_resolver=lambda route: None)
    message = str(raised.value)
    for needle in ("'vllm'", "VLLM_URL", "'hosted'", "HOSTED_KEY"):
        assert needle in message, f"{needle} should be named in: {message}"


def test_build_backends_requires_a_url_variable_for_openai_backends() -> None:
    # given an openai backend with no base_url_env
    params = GatewayParams(backends=(BackendParams(name="remote", kind="openai"),), fallback=("remote",))

    env: dict[str, str] = {}

    # when the chain is built, then the missing setting is named
    with pytest.raises(BackendConfigError, match="needs base_url_env"):
        build_backends(params, ModelParams(), env.get, adapter_resolver=lambda route: None)
