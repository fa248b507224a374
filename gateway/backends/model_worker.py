"""The local model in a process of its own, generating on that process's main thread.

Why: torch parallelises with libgomp, which keeps a pool of worker threads for
every live thread that has run a parallel op. In the gateway, the semantic
cache embeds on the event loop's helper threads, and each request used to
generate on a thread of its own: more pool threads than the 2 cores, so libgomp
stopped spinning between parallel regions and every small matmul waited for a
wake-up (SmolLM2 at 16-17 tokens/s instead of 27-28). Here the model process
has one torch thread, its main thread, whatever the gateway does; a crash
there never takes the gateway down, and the next request starts a new one.

The parent talks to the child over a socket (multiprocessing's Connection):

    parent -> child: ("config", ModelParams, resolver, max_adapters), then
                     ("job", id, CompletionRequest) | ("warm", id, Route) | ("cancel", id)
    child -> parent: ("started", id) | ("chunk", id, text)
                     | ("done", id, Generation | None) | ("cancelled", id) | ("error", id, text)

The child reads on a helper thread (no torch work there) so a cancel reaches a
running generation at its next token; only the main thread writes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from flywheel.runtime.child import start_child
from gateway.contracts import BackendError

if TYPE_CHECKING:
    from flywheel.runtime import Generation
    from flywheel.settings import ModelParams
    from gateway.backends.local import AdapterResolver
    from gateway.contracts import CompletionRequest, Route

log = logging.getLogger(__name__)


class WorkerCancelled(Exception):
    """The job was cancelled before or during generation."""


@dataclass
class WorkerJob:
    """What the parent keeps of one job: its future and where its chunks go."""

    future: Future[Any]
    on_chunk: Callable[[str], None] | None = None
    on_start: Callable[[], None] | None = None


# -- the child ------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    """The model process: load models on demand and run jobs one at a time on this (main) thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when to stop; it closes the socket
    from gateway.backends.local import LoadedModels

    _, model_params, resolver, max_adapters = conn.recv()
    models = LoadedModels(model_params, resolver, max_adapters=max_adapters)
    jobs: queue.Queue[tuple[str, int, Any] | None] = queue.Queue()
    cancels: dict[int, threading.Event] = {}

    def read() -> None:
        try:
            while True:
                message = conn.recv()
                if message[0] == "cancel":
                    event = cancels.get(message[1])
                    if event is not None:
                        event.set()
                else:
                    cancels[message[1]] = threading.Event()
                    jobs.put(message)
        except (EOFError, OSError):
            pass
        for event in list(cancels.values()):
            event.set()  # the gateway is gone: stop the running generation
        jobs.put(None)

    threading.Thread(target=read, name="model-worker-reader", daemon=True).start()
    while (item := jobs.get()) is not None:
        kind, job_id, payload = item
        cancel = cancels[job_id]
        try:
            if cancel.is_set():
                conn.send(("cancelled", job_id))
                continue
            conn.send(("started", job_id))
            if kind == "warm":
                models.for_route(payload)
                conn.send(("done", job_id, None))
                continue
            request: CompletionRequest = payload

            def send_chunk(text: str, job_id: int = job_id) -> None:
                conn.send(("chunk", job_id, text))

            generation = models.for_route(request.route).generate_streaming(
                list(request.messages),
                max_new_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=request.stop,
                seed=request.seed,
                on_text=send_chunk,
                cancel=cancel,
            )
            conn.send(("cancelled", job_id) if cancel.is_set() else ("done", job_id, generation))
        except (EOFError, OSError):
            return  # the socket is gone
        except Exception as error:  # reported to the gateway, which may fall back to another backend
            conn.send(("error", job_id, f"{type(error).__name__}: {error}"))
        finally:
            cancels.pop(job_id, None)


def main(argv: list[str] | None = None) -> None:
    """The model process's entry point (`flywheel.runtime.child`): serve on the socket FD `argv[0]`."""
    (fd,) = (argv if argv is not None else sys.argv[1:])[:1]
    logging.basicConfig(level=logging.INFO, format="model-worker: %(message)s")
    _serve(Connection(int(fd)))


# -- the parent -----------------------------------------------------------------------


class ModelWorker:
    """The parent's handle on one model process: submit jobs, get futures, cancel, close.

    The process starts on first use; if it dies, pending jobs
    fail with `BackendError` and the next job starts a new process.
    """

    def __init__(
        self,
        name: str,
        model_params: ModelParams,
        resolver: AdapterResolver | None,
        max_adapters: int,
    ) -> None:
        self.name = name
        self._config = ("config", model_params, resolver, max_adapters)
        self._lock = threading.Lock()  # guards the process, the socket's writes and `_pending`
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._hangup: socket.socket | None = None  # shuts the socket down for both ends on close
        self._pending: dict[int, WorkerJob] = {}
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The model process's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _ensure_started(self) -> Connection:
        if self._closed:
            raise BackendError(f"backend {self.name!r} is closed")
        if self._conn is not None and self._process is not None and self._process.poll() is None:
            return self._conn
        if self._hangup is not None:
            self._hangup.close()  # of a process that died
        process, conn, hangup = start_child(__name__)
        # No waiting for the child here (this may be the event loop): jobs queue in the socket
        # while it imports torch, and if it dies starting, its reader fails them.
        try:
            conn.send(self._config)
        except OSError as error:
            raise BackendError(
                f"the model process (pid {process.pid}) could not be reached: {error}"
            ) from error
        self._process, self._conn, self._hangup = process, conn, hangup
        threading.Thread(
            target=self._read, args=(conn, process), name=f"model-worker-{self.name}", daemon=True
        ).start()
        log.info("model process for backend %s started (pid %s)", self.name, process.pid)
        return conn

    def _send(self, message: tuple[Any, ...], job: WorkerJob | None = None) -> int:
        with self._lock:
            conn = self._ensure_started()
            job_id = next(self._ids)
            if job is not None:
                self._pending[job_id] = job
            try:
                conn.send((message[0], job_id, *message[1:]))
            except OSError as error:
                self._pending.pop(job_id, None)
                raise BackendError(f"the model process of backend {self.name!r} is gone: {error}") from error
            return job_id

    def submit(
        self,
        request: CompletionRequest,
        on_chunk: Callable[[str], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> tuple[int, Future[Generation]]:
        """Queue one request in the model process; its id (for `cancel`) and its future."""
        future: Future[Generation] = Future()
        job_id = self._send(("job", request), WorkerJob(future, on_chunk, on_start))
        return job_id, future

    def warm(self, route: Route) -> Future[None]:
        """Load the model (and adapter) for `route` in the model process."""
        future: Future[None] = Future()
        self._send(("warm", route), WorkerJob(future))
        return future

    def cancel(self, job_id: int) -> None:
        """Stop a job: skipped if still queued, stopped at its next token if running."""
        with self._lock:
            conn = self._conn
            if conn is None or job_id not in self._pending:
                return
            with contextlib.suppress(OSError):  # the process is gone; its reader fails the job
                conn.send(("cancel", job_id))

    def _read(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        """Deliver the model process's messages to the waiting futures, until it goes away."""
        try:
            while True:
                self._dispatch(conn.recv())
        except (EOFError, OSError):
            pass
        conn.close()
        with self._lock:
            if self._conn is conn:
                self._conn = None
            pending, self._pending = self._pending, {}
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if pending:
            log.error("model process %s of backend %s exited (code %s)", process.pid, self.name, code)
        for job in pending.values():
            _settle(
                job.future,
                error=BackendError(f"the model process (pid {process.pid}) exited with code {code}"),
            )

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, job_id, *rest = message
        with self._lock:
            job = (
                self._pending.get(job_id) if kind in ("started", "chunk") else self._pending.pop(job_id, None)
            )
        if job is None:
            return
        if kind == "started":
            if not job.future.set_running_or_notify_cancel():
                self.cancel(job_id)  # cancelled by the caller while it waited
            elif job.on_start is not None:
                job.on_start()
        elif kind == "chunk":
            if job.on_chunk is not None:
                job.on_chunk(rest[0])
        elif kind == "done":
            _settle(job.future, result=rest[0])
        elif kind == "cancelled":
            _settle(job.future, error=WorkerCancelled())
        else:  # the model failed (e.g. ContextLengthError): a backend error, so the chain tries the next
            _settle(job.future, error=BackendError(f"local model failed: {rest[0]}"))

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, stop the running one and end the process (its reader fails what waited)."""
        with self._lock:
            self._closed = True
            hangup, process = self._hangup, self._process
            pending = list(self._pending)
        if hangup is None or process is None:
            return
        for job_id in pending:
            self.cancel(job_id)
        # Both ends see EOF: the model process stops its generation and exits, our reader
        # fails what still waits. (Closing the fd under a blocked recv() would not wake it.)
        hangup.shutdown(socket.SHUT_RDWR)
        hangup.close()
        deadline = time.monotonic() + timeout
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Finish a future unless its caller already cancelled it."""
    if future.done():
        return
    if not future.running() and not future.set_running_or_notify_cancel():
        return  # cancelled while it waited
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
