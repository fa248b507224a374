"""The in-process backend: the SmolLM2 runtime (plus a route's LoRA adapter) behind a bounded queue.

The model answers one request at a time, so generation runs on one dedicated
worker thread and the event loop only waits for it. Admission is counted
(waiting + running); past `max_queue` waiting requests a caller gets
`QueueFullError` (HTTP 429 with Retry-After) instead of an ever longer wait.
Both `complete` and `stream` run the runtime's `GenerationStream`, so a
request that is abandoned (client gone, timeout) stops its generation at the
next token instead of holding the model until `max_tokens`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gateway.backends.model_worker import ModelWorker, WorkerCancelled
from gateway.contracts import (
    BackendError,
    Completion,
    CompletionRequest,
    QueueFullError,
    Route,
    StreamDelta,
    StreamResult,
)
from gateway.routing import base_model_name

if TYPE_CHECKING:
    from flywheel.runtime import ChatModel, Generation, GenerationStream
    from flywheel.settings import ModelParams

log = logging.getLogger(__name__)

AdapterResolver = Callable[[Route], Path | None]
ModelLoader = Callable[["ModelParams", "Path | None"], "ChatModel"]
ModelUnloader = Callable[["ChatModel"], object]
Download = Callable[[str, Path], Path]

_ADAPTER_CONFIG = "adapter_config.json"
_COMPLETE_MARKER = ".flywheel-complete"


def _load_chat_model(params: ModelParams, adapter: Path | None) -> ChatModel:
    """The runtime's cached loader (imported here: torch loads on first use, not at import)."""
    from flywheel.runtime import load_chat_model

    return load_chat_model(params, adapter)


def _unload_chat_model(chat: ChatModel) -> object:
    from flywheel.runtime import unload_chat_model

    return unload_chat_model(chat)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_"


def _find_adapter(root: Path) -> Path:
    """The folder holding `adapter_config.json`: the root, else the shallowest one below it."""
    if (root / _ADAPTER_CONFIG).is_file():
        return root
    found = sorted(root.rglob(_ADAPTER_CONFIG), key=lambda p: len(p.parts))
    if not found:
        raise BackendError(f"no LoRA adapter ({_ADAPTER_CONFIG}) in the artifacts at {root}")
    return found[0].parent


class MlflowAdapterResolver:
    """Downloads a route's adapter from MLflow once into `<cache_dir>/<model>/<version>`, then reuses it.

    A registered version's artifacts never change, so the folder is a cache
    that survives restarts. Downloads land in a temporary folder renamed into
    place, so a crash or a second gateway never leaves half an adapter behind.
    """

    def __init__(self, cache_dir: Path, download: Download | None = None) -> None:
        self.cache_dir = cache_dir
        self._download = download

    def __call__(self, route: Route) -> Path | None:
        """The local adapter folder for `route`, or None for the base model."""
        if route.adapter_uri is None:
            return None
        version = route.model_version or uuid.uuid5(uuid.NAMESPACE_URL, route.adapter_uri).hex
        target = self.cache_dir / _safe(route.model_name) / _safe(version)
        if not (target / _COMPLETE_MARKER).is_file():
            self._fetch(route.adapter_uri, target)
        return _find_adapter(target)

    def _fetch(self, uri: str, target: Path) -> None:
        download = self._download
        if download is None:
            from registry import download_artifacts

            download = download_artifacts
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            download(uri, staging)
            (staging / _COMPLETE_MARKER).write_text(uri, encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)  # an incomplete earlier download
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / _COMPLETE_MARKER).is_file():
                    raise
                # Another process finished the same download first; theirs is as good as ours.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("downloaded adapter %s to %s", uri, target)


class LoadedModels:
    """The chat models a backend has loaded, by adapter (None = the base), least recently used first.

    Used by one thread only: the backend's worker thread, or a model process's main thread.
    """

    def __init__(
        self,
        model_params: ModelParams,
        resolver: AdapterResolver | None,
        *,
        loader: ModelLoader | None = None,
        unloader: ModelUnloader = _unload_chat_model,
        max_adapters: int = 2,
    ) -> None:
        self.model_params = model_params
        self._resolver = resolver
        self._loader = loader or _load_chat_model
        self._unloader = unloader
        self._max_adapters = max_adapters
        self._models: OrderedDict[str | None, ChatModel] = OrderedDict()

    def for_route(self, route: Route) -> ChatModel:
        """The model for `route` (base, or base + adapter), loading it on first use."""
        key = route.adapter_uri
        chat = self._models.get(key)
        if chat is not None:
            self._models.move_to_end(key)
            return chat
        adapter: Path | None = None
        if key is not None:
            if self._resolver is None:
                raise BackendError(f"route {route.arm} needs adapter {key} but no adapter resolver is set")
            adapter = self._resolver(route)
        chat = self._loader(self.model_params, adapter)
        self._models[key] = chat
        adapters = [k for k in self._models if k is not None]
        for old in adapters[: max(0, len(adapters) - self._max_adapters)]:
            # Adapters no longer routed: each is a full copy of the model's weights.
            self._unloader(self._models.pop(old))
        return chat


class _Cancelled(Exception):
    """The caller went away before or during generation."""


@dataclass
class _Job:
    """One request on its way through the worker thread."""

    request: CompletionRequest
    on_chunk: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None  # perf_counter when the worker picked it up
    stream: GenerationStream | None = None  # set by the worker once generation starts
    on_abandon: Callable[[], None] | None = None  # tells a model process to stop this job

    def abandon(self) -> None:
        """Stop this job from any thread: skip it if queued, stop its generation if running."""
        self.cancel.set()
        if self.on_abandon is not None:
            self.on_abandon()
        stream = self.stream  # read after setting cancel; the worker reads them the other way round
        if stream is not None:
            # close() joins the generation thread, so it must not run on the event loop;
            # it stops the model at its next token even while no text is being emitted.
            threading.Thread(target=stream.close, name="cancel-generation", daemon=True).start()


class LocalBackend:
    """The local chat model behind a bounded admission queue, generating one request at a time.

    `worker="process"` (the gateway's default) runs the model in a process of its
    own (`model_worker`), where generation has the cores to itself; `"thread"`
    runs it on one worker thread of this process (tests, and injected loaders).
    """

    def __init__(
        self,
        name: str,
        model_params: ModelParams,
        max_queue: int,
        adapter_resolver: AdapterResolver | None = None,
        *,
        loader: ModelLoader | None = None,
        unloader: ModelUnloader = _unload_chat_model,
        max_adapters: int = 2,
        worker: Literal["thread", "process"] = "thread",
    ) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if worker == "process" and (loader is not None or unloader is not _unload_chat_model):
            raise ValueError("a model process loads models itself: pass no loader or unloader")
        self.name = name
        self.model_params = model_params
        self.max_queue = max_queue
        self.served_model = base_model_name(model_params)
        self._process: ModelWorker | None = None
        if worker == "process":
            self._process = ModelWorker(name, model_params, adapter_resolver, max_adapters)
        self._models = LoadedModels(
            model_params, adapter_resolver, loader=loader, unloader=unloader, max_adapters=max_adapters
        )  # worker thread only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"backend-{name}")
        self._lock = threading.Lock()
        self._inflight = 0  # admitted and not finished: waiting + running
        self._service_s: float | None = None  # moving average of one generation's duration
        self._running: _Job | None = None
        self._closed = False

    # -- admission ----------------------------------------------------------------

    @property
    def model_process_pid(self) -> int | None:
        """The model process's pid while it runs (None in thread mode or before the first request)."""
        return self._process.pid if self._process is not None else None

    @property
    def inflight(self) -> int:
        """Requests admitted and not finished (waiting + running)."""
        return self._inflight

    def retry_after_s(self) -> float:
        """When a slot should free up: about one generation's time (at least 1 s)."""
        return max(1.0, math.ceil(self._service_s or 1.0))

    def _submit(self, job: _Job) -> Future[Generation]:
        if self._closed:
            raise BackendError(f"backend {self.name!r} is closed")
        with self._lock:
            # One may run and max_queue may wait; the next caller is told to come back.
            if self._inflight > self.max_queue:
                raise QueueFullError(self.retry_after_s())
            self._inflight += 1
        try:
            future = self._executor.submit(self._run, job) if self._process is None else self._in_process(job)
        except RuntimeError as error:  # the executor was shut down meanwhile
            self._release(None)
            raise BackendError(f"backend {self.name!r} is closed") from error
        except BackendError:  # the model process could not start
            self._release(None)
            raise
        # Released when the job really ends (or is cancelled before it starts), not when
        # the caller stops waiting: an abandoned generation still occupies the model.
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: Future[Generation] | None) -> None:
        with self._lock:
            self._inflight -= 1

    def _in_process(self, job: _Job) -> Future[Generation]:
        """Hand `job` to the model process."""
        assert self._process is not None
        process = self._process

        def started() -> None:
            job.started_at = time.perf_counter()

        job_id, future = process.submit(job.request, job.on_chunk, started)
        job.on_abandon = lambda: process.cancel(job_id)

        def observe(done: Future[Generation]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._observe_service(done.result().latency_s)

        future.add_done_callback(observe)
        return future

    def _observe_service(self, duration: float) -> None:
        # Generation time only: a first request that loads the model would skew Retry-After for long.
        self._service_s = duration if self._service_s is None else 0.8 * self._service_s + 0.2 * duration

    # -- the worker thread ----------------------------------------------------------

    def _run(self, job: _Job) -> Generation:
        if job.cancel.is_set():
            raise _Cancelled
        job.started_at = time.perf_counter()
        self._running = job
        try:
            return self._generate(job)
        finally:
            self._running = None

    def _generate(self, job: _Job) -> Generation:
        request = job.request
        chat = self._models.for_route(request.route)
        generation_started = time.perf_counter()
        stream = chat.stream(
            list(request.messages),
            max_new_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=request.stop,
            seed=request.seed,
        )
        job.stream = stream
        try:
            if job.cancel.is_set():
                raise _Cancelled  # abandoned while the stream was being set up
            for chunk in stream:
                if job.cancel.is_set():
                    raise _Cancelled
                if job.on_chunk is not None:
                    job.on_chunk(chunk)
        finally:
            stream.close()  # stops a generation still running (on cancel) and joins its thread
        self._observe_service(time.perf_counter() - generation_started)
        return stream.result

    # -- the Backend protocol -----------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer one request; the event loop keeps running while the model works."""
        started = time.perf_counter()
        job = _Job(request)
        generation = await self._wait(job, self._submit(job))
        return self._completion(job, generation, started, ttft=None)

    async def stream(self, request: CompletionRequest, result: StreamResult) -> AsyncIterator[StreamDelta]:
        """Yield text as the model produces it; closing this iterator stops the generation."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def deliver(item: str | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                job.cancel.set()  # the loop is gone: nobody will read this

        job = _Job(request, on_chunk=deliver)
        future = self._submit(job)
        # The done callback runs after the last on_chunk call, so `None` arrives last.
        future.add_done_callback(lambda _f: deliver(None))
        ttft: float | None = None
        try:
            while (chunk := await queue.get()) is not None:
                if ttft is None:
                    ttft = time.perf_counter() - started
                yield StreamDelta(chunk)
            generation = await self._wait(job, future)
            result.completion = self._completion(job, generation, started, ttft=ttft)
        finally:
            if not future.done():
                # The consumer left early (GeneratorExit or CancelledError): stop generating.
                future.cancel()
                job.abandon()

    async def _wait(self, job: _Job, future: Future[Generation]) -> Generation:
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                # The job was dropped by aclose(), not this caller: that is a backend failure.
                raise BackendError(f"backend {self.name!r} closed before answering") from None
            future.cancel()
            job.abandon()
            raise
        except (_Cancelled, WorkerCancelled):
            raise BackendError(f"backend {self.name!r} stopped the generation (closing)") from None
        except BackendError:
            raise
        except Exception as error:
            # Including the runtime's ContextLengthError: another backend (a larger model) may
            # still serve the request, so the chain should try it; the cause stays attached.
            raise BackendError(f"local model failed: {type(error).__name__}: {error}") from error

    def _completion(
        self, job: _Job, generation: Generation, started: float, *, ttft: float | None
    ) -> Completion:
        # Times as the client sees them: from admission, queue wait included.
        waited = (job.started_at or started) - started
        return Completion(
            text=generation.text,
            finish_reason=generation.finish_reason,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            ttft_s=ttft if ttft is not None else waited + generation.ttft_s,
            latency_s=time.perf_counter() - started,
            backend=self.name,
            served_model=self.served_model,
        )

    async def warm(self, route: Route) -> None:
        """Load the model (and adapter) for `route` now, on the worker thread, so no request pays for it."""
        if self._process is not None:
            await asyncio.wrap_future(self._process.warm(route))
            return
        await asyncio.wrap_future(self._executor.submit(self._models.for_route, route))

    async def aclose(self) -> None:
        """Refuse new work and cancel what waits and what runs (the model stops at its next token)."""
        self._closed = True
        if self._process is not None:
            await asyncio.to_thread(self._process.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        running = self._running
        if running is not None:
            running.abandon()
