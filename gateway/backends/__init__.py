"""Model backends: the local SmolLM2 runtime, any OpenAI-compatible server, and the fallback chain."""

from gateway.backends.fallback import BackendConfigError, FallbackChain, build_backend, build_backends
from gateway.backends.local import LocalBackend, MlflowAdapterResolver
from gateway.backends.openai_compat import OpenAICompatBackend, RetriesExhaustedError

__all__ = [
    "BackendConfigError",
    "FallbackChain",
    "LocalBackend",
    "MlflowAdapterResolver",
    "OpenAICompatBackend",
    "RetriesExhaustedError",
    "build_backend",
    "build_backends",
]
