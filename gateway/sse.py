"""Server-sent events for streamed answers: `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`.

A chunk's envelope (id, created, model) is the same for the whole stream, so it is
encoded once and each delta only encodes its text. The shapes are those of
`gateway.schemas.ChatCompletionChunk` (the tests check the two agree).
"""

from __future__ import annotations

import orjson

from gateway.errors import ApiError

DONE = b"data: [DONE]\n\n"


class ChunkEncoder:
    """Encodes the chunks of one stream."""

    def __init__(self, request_id: str, model: str, created: int) -> None:
        head = orjson.dumps(
            {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        self._open = b"data: " + head[:-1] + b',"choices":['
        self._delta = self._open + b'{"index":0,"delta":{"content":'
        self._end = b'"logprobs":null,"finish_reason":null}]}\n\n'
        self._delta_end = b"}," + self._end

    def role(self) -> bytes:
        """The first chunk: the assistant role and empty content, as OpenAI sends it."""
        return self._open + b'{"index":0,"delta":{"role":"assistant","content":""},' + self._end

    def delta(self, text: str) -> bytes:
        """A chunk adding `text`."""
        return self._delta + orjson.dumps(text) + self._delta_end

    def finish(self, reason: str) -> bytes:
        """The chunk carrying the finish reason (empty delta)."""
        return (
            self._open
            + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":'
            + orjson.dumps(reason)
            + b"}]}\n\n"
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The usage chunk (no choices), sent last when `stream_options.include_usage` is set."""
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._open + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"


def error_event(error: ApiError) -> bytes:
    """An error after the stream started (the status is already sent): OpenAI's clients raise on it."""
    return b"data: " + error.body() + b"\n\n"
