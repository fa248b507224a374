"""An instant OpenAI-compatible stub: `POST /v1/chat/completions` returns one fixed answer.

    python bench/stub_openai.py --port 9100 [--host 127.0.0.1]

Raw ASGI under uvicorn (uvloop + httptools, access log off), so the stub costs as
little as possible and what a benchmark measures in front of it is the gateway.
`stream: true` gets the same answer as three SSE chunks. Loopback only by default.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

ANSWER = "This is the stub's fixed answer."
_USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def _completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "stub",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
            ],
            "usage": _USAGE,
        }
    )


def _stream_body() -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> bytes:
        choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": "stub"}
        return b"data: " + orjson.dumps({**body, "choices": choices, "usage": usage}) + b"\n\n"

    words = ANSWER.split(" ")
    parts = [chunk({"role": "assistant", "content": ""}, None)]
    parts += [chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(words)]
    parts += [chunk({}, "stop"), chunk({}, None, _USAGE), b"data: [DONE]\n\n"]
    return b"".join(parts)


_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]
_COMPLETION = _completion_body()
_STREAM = _stream_body()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The whole stub: drain the body, answer at once."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"].endswith("/chat/completions"):
        streamed = b'"stream":true' in body or b'"stream": true' in body
        payload, headers = (_STREAM, _SSE) if streamed else (_COMPLETION, _JSON)
        status = 200
    elif scope["path"] == "/healthz":
        payload, headers, status = b'{"status":"ok"}', _JSON, 200
    else:
        payload, headers, status = b'{"error":{"message":"not found"}}', _JSON, 404
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> None:
    """Serve the stub until interrupted."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
