"""MiniLM in its own process, for bf16 batch embedding that leaves the caller's threads alone.

Why a process: torch runs on libgomp (OpenMP), which keeps a pool of worker
threads for every live thread that has run a parallel op. Once a process has
more pool threads than cores (two live torch threads on 2 cores), libgomp stops
spinning between parallel regions and every small op pays a futex wake-up:
measured here, a 576x1536 float32 GEMV goes from 39 to 155 us and SmolLM2
generating on a thread from 28 to 17 tokens/s, for as long as the other thread
lives (a thread that ran a matmul and exited costs nothing). No MKL or OpenMP
setting undoes it (OMP_WAIT_POLICY=active spins both pools on the same cores).
Prefect runs tasks on long-lived threads and the flywheel runs curate, retrain
and evaluate in one process, so batch embedding runs in a child process whose
only job is to embed: the parent sends lists of texts over a socket and gets
float32 rows back; the child exits when the socket closes.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from flywheel.runtime.child import start_child

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 300.0  # importing torch and loading MiniLM on a busy 2-core machine


class EmbeddingWorkerError(RuntimeError):
    """The embedding process failed or went away."""


def _serve(conn: Connection, dtype: str) -> None:
    """The child: load MiniLM in `dtype`, then answer lists of texts until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the pipe
    from flywheel.runtime.embeddings import load_embedder

    try:
        embedder = load_embedder(dtype)  # type: ignore[arg-type]  # checked by the parent
    except Exception as error:  # reported to the parent, which raises it with this text
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", embedder.dim))
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", embedder.encode(texts, batch_size=64)))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _stop(process: subprocess.Popen[bytes], conn: Connection) -> None:
    conn.close()  # the child's recv() ends and it returns
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class EmbeddingWorker:
    """MiniLM in a child process: `encode(texts)` returns L2-normalised float32 rows.

    The process starts on `wait_ready()` or the first `encode`, loads the model
    there, and stops on `close()` or when this object is collected.
    Callers may share one worker across threads: requests are serialised.
    """

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.dim: int | None = None
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._finalizer: Any = None

    @property
    def running(self) -> bool:
        """Whether the embedding process is alive."""
        return self._process is not None and self._process.poll() is None

    def _start(self) -> None:
        if self._process is not None:
            return
        process, conn, hangup = start_child(__name__, self.dtype)
        hangup.close()  # closing our Connection is enough: the child only reads
        self._process, self._conn = process, conn
        self._finalizer = weakref.finalize(self, _stop, process, conn)

    def _reply(self) -> Any:
        assert self._conn is not None and self._process is not None
        if not self._conn.poll(_START_TIMEOUT_S):
            raise EmbeddingWorkerError(f"the embedding process (pid {self._process.pid}) did not answer")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError) as error:
            try:
                code = self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            raise EmbeddingWorkerError(
                f"the embedding process (pid {self._process.pid}) exited with code {code}"
            ) from error
        if kind == "error":
            raise EmbeddingWorkerError(f"the embedding process failed: {value}")
        return value

    def wait_ready(self) -> None:
        """Start the process if needed and wait until its model is loaded."""
        with self._lock:
            self._start()
            if self.dim is None:
                self.dim = int(self._reply())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` in the child; rows in input order."""
        self.wait_ready()
        with self._lock:
            assert self._conn is not None
            self._conn.send(list(texts))
            return np.asarray(self._reply(), dtype=np.float32)

    __call__ = encode

    def close(self) -> None:
        """Stop the process (idempotent)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()


def main(argv: list[str] | None = None) -> None:
    """The embedding process's entry point (`flywheel.runtime.child`): argv is FD, DTYPE."""
    fd, dtype = (argv if argv is not None else sys.argv[1:])[:2]
    _serve(Connection(int(fd)), dtype)
