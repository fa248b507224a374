"""Light types shared by the runtime and its callers: results, messages, errors.

This module imports nothing heavy, so the gateway and the CLI can type against
`Generation` and catch the runtime's errors without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


class MessageLike(Protocol):
    """Any object with `role` and `content` (e.g. `flywheel.schemas.ChatMessage`)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


# OpenAI-format chat messages: plain dicts or objects such as ChatMessage.
Message = Mapping[str, Any] | MessageLike
Messages = Sequence[Message]


@dataclass(frozen=True)
class Generation:
    """One completed reply and what it cost.

    `completion_tokens` counts every token the model produced, including a
    terminating `<|im_end|>`/EOS and the tokens that completed a stop string,
    so it never exceeds `max_new_tokens` (as vLLM counts). `text` excludes
    both. Times are seconds from the moment this generation got the model
    (waiting for the model lock is excluded; the caller measures its queue).
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    latency_s: float

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens, as OpenAI's `usage.total_tokens`."""
        return self.prompt_tokens + self.completion_tokens


class LLMRuntimeError(Exception):
    """Base of the runtime's own errors."""


class ModelNotFoundError(LLMRuntimeError, FileNotFoundError):
    """The model source (wheel or local folder) or its GGUF file is missing."""


class AdapterNotFoundError(LLMRuntimeError, FileNotFoundError):
    """The LoRA adapter folder is missing or is not a PEFT adapter."""


class ContextLengthError(LLMRuntimeError, ValueError):
    """The prompt plus `max_new_tokens` does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) "
            f"exceeds the context window of {context_length} tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length


def normalise_messages(messages: Messages) -> list[dict[str, str]]:
    """Return messages as `{"role", "content"}` dicts; raise ValueError on a malformed one."""
    if isinstance(messages, (str, bytes)) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} messages")
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
        else:
            role, content = getattr(message, "role", None), getattr(message, "content", None)
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(f"message {index} needs a string 'role' and a string 'content'")
        out.append({"role": role, "content": content})
    return out


def check_generation_args(
    max_new_tokens: int, temperature: float, stop: Sequence[str] | None
) -> tuple[str, ...]:
    """Validate generation arguments; return the stop strings as a tuple."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if stop is None:
        return ()
    if isinstance(stop, str):
        # A bare string would otherwise be taken as one stop string per character.
        stop = [stop]
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError("stop strings must be non-empty strings")
    return tuple(stop)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut < 0:
        return text, False
    return text[:cut], True
