"""The fallback chain: backends tried in order, and the builder that makes it from params and environment."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from flywheel.settings import BackendParams, Environment, GatewayParams, ModelParams
from gateway.backends.local import AdapterResolver, LocalBackend, MlflowAdapterResolver, ModelLoader
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.contracts import (
    Backend,
    BackendError,
    Completion,
    CompletionRequest,
    QueueFullError,
    StreamDelta,
    StreamResult,
)

log = logging.getLogger(__name__)

EnvLookup = Callable[[str], str | None]


class BackendConfigError(ValueError):
    """A backend cannot be built: a missing environment variable or setting."""


class FallbackChain:
    """Tries each backend in order until one answers.

    A `BackendError` moves on to the next backend. So does a full local queue
    (`QueueFullError`): a remote backend behind it takes the overflow. When
    every backend fails, the chain raises `QueueFullError` if any queue was
    full (retrying later will help) and `BackendError` otherwise. A stream
    moves on only if its backend fails before the first delta; after that the
    client has part of an answer, and the error is raised.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("a fallback chain needs at least one backend")
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.name = "fallback(" + ",".join(b.name for b in self.backends) + ")"

    def backend(self, name: str) -> Backend:
        """The chain's backend called `name` (e.g. to warm the local model)."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(f"no backend {name!r} in {self.name}")

    async def complete(self, request: CompletionRequest) -> Completion:
        """The first backend's answer that succeeds, with `attempts` counted over the whole chain."""
        failures = _Failures()
        for backend in self.backends:
            try:
                completion = await backend.complete(request)
            except (BackendError, QueueFullError) as error:
                failures.add(backend, error)
                continue
            return replace(completion, attempts=failures.attempts + completion.attempts)
        raise failures.final()

    async def stream(self, request: CompletionRequest, result: StreamResult) -> AsyncIterator[StreamDelta]:
        """The first backend's stream that starts; `result` gets its completion and the chain's failures."""
        failures = _Failures()
        for backend in self.backends:
            inner = StreamResult()
            deltas = backend.stream(request, inner)
            started = False
            try:
                async for delta in deltas:
                    started = True
                    yield delta
            except (BackendError, QueueFullError) as error:
                if started:
                    raise
                failures.add(backend, error)
                continue
            finally:
                close = getattr(deltas, "aclose", None)
                if close is not None:
                    await close()  # also on client disconnect: the backend stops generating
            if inner.completion is None:
                raise BackendError(f"{backend.name} ended its stream without a result")
            result.completion = replace(
                inner.completion, attempts=failures.attempts + inner.completion.attempts
            )
            result.extra.update(inner.extra)
            if failures.messages:
                result.extra["fallback_errors"] = failures.messages
            return
        raise failures.final()

    async def aclose(self) -> None:
        """Close every backend."""
        for backend in self.backends:
            await backend.aclose()


class _Failures:
    """What went wrong so far along the chain."""

    def __init__(self) -> None:
        self.attempts = 0
        self.messages: list[str] = []
        self.queue_full: QueueFullError | None = None
        self.last: BaseException | None = None

    def add(self, backend: Backend, error: BackendError | QueueFullError) -> None:
        if isinstance(error, QueueFullError):
            # Turned away at the door: no attempt was made, and a later retry may succeed.
            if self.queue_full is None or error.retry_after_s < self.queue_full.retry_after_s:
                self.queue_full = error
        else:
            self.attempts += int(getattr(error, "attempts", 1))
        self.last = error
        self.messages.append(f"{backend.name}: {error}")
        log.warning("backend %s failed, trying the next: %s", backend.name, error)

    def final(self) -> BaseException:
        if self.queue_full is not None:
            return QueueFullError(self.queue_full.retry_after_s)
        error = BackendError("every backend failed: " + "; ".join(self.messages))
        error.__cause__ = self.last
        return error


def _variable(backend: BackendParams, what: str, variable: str | None, env_lookup: EnvLookup) -> str | None:
    if variable is None:
        return None
    value = env_lookup(variable)
    if not value:
        raise BackendConfigError(
            f"backend {backend.name!r} reads its {what} from the environment variable {variable}, "
            "which is not set"
        )
    return value


def build_backend(
    spec: BackendParams,
    params: GatewayParams,
    model_params: ModelParams,
    env_lookup: EnvLookup = os.environ.get,
    adapter_resolver: AdapterResolver | None = None,
    local_loader: ModelLoader | None = None,
) -> Backend:
    """One backend from its params; URLs and keys come from the environment variables it names."""
    if spec.kind == "local":
        # An injected loader (tests) lives in this process: it runs on a thread here.
        worker = "thread" if local_loader is not None else params.local_worker
        return LocalBackend(
            spec.name, model_params, params.max_queue, adapter_resolver, loader=local_loader, worker=worker
        )
    if spec.base_url_env is None:
        raise BackendConfigError(
            f"backend {spec.name!r} (kind openai) needs base_url_env: "
            "the environment variable holding its URL"
        )
    base_url = _variable(spec, "base URL", spec.base_url_env, env_lookup)
    assert base_url is not None  # _variable returns a value for a named variable or raises
    return OpenAICompatBackend(
        spec.name,
        base_url,
        _variable(spec, "API key", spec.api_key_env, env_lookup),
        spec.model,
        spec.timeout_seconds,
        params.retries,
        params.retry_backoff_seconds,
    )


def build_backends(
    params: GatewayParams,
    model_params: ModelParams,
    env_lookup: EnvLookup = os.environ.get,
    adapter_resolver: AdapterResolver | None = None,
    *,
    adapter_dir: Path | None = None,
    local_loader: ModelLoader | None = None,
) -> FallbackChain:
    """The fallback chain of `params.fallback`, in order.

    Local backends download adapters with `adapter_resolver`, by default from
    MLflow into `adapter_dir` (default `$FLYWHEEL_HOME/adapters`). Every
    missing variable is named in one `BackendConfigError`.
    """
    if adapter_resolver is None:
        adapter_resolver = MlflowAdapterResolver(adapter_dir or Environment().home / "adapters")
    declared = {spec.name: spec for spec in params.backends}
    built: list[Backend] = []
    problems: list[str] = []
    for name in params.fallback:
        try:
            built.append(
                build_backend(
                    declared[name], params, model_params, env_lookup, adapter_resolver, local_loader
                )
            )
        except BackendConfigError as error:
            problems.append(str(error))
    if problems:
        raise BackendConfigError("; ".join(problems))
    return FallbackChain(built)
