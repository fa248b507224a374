"""The embedded stack's gateway serving the real SmolLM2 to the official openai client."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from flywheel.requestlog import LoggedRequest, open_request_log
from flywheel.settings import Environment

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France? Answer in one sentence."


def _logged(env: Environment, request_id: str, *, with_feedback: bool = False) -> LoggedRequest:
    """The request's log entry, once the batch writer has flushed it (it flushes every 0.2 s)."""
    log = open_request_log(env.request_log_uri)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            entry = log.get(request_id)
            if entry is not None and (not with_feedback or entry.record.feedback is not None):
                return entry
            time.sleep(0.2)
    finally:
        log.close()
    pytest.fail(f"request {request_id} (feedback={with_feedback}) never reached the request log")


def test_openai_client_gets_a_real_answer_and_the_request_is_logged(stack: Environment) -> None:
    # given the official client pointed at the gateway
    client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused", max_retries=0)
    # when it asks a question without streaming
    raw = client.chat.completions.with_raw_response.create(
        model="support-assistant",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=24,
        user="integration-user",
    )
    completion = raw.parse()
    # then the real model answers, with usage, a finish reason and the request id in header and body
    answer = completion.choices[0].message.content or ""
    assert "Paris" in answer, f"SmolLM2 should know the capital of France: {answer!r}"
    assert completion.usage is not None and completion.usage.completion_tokens > 0, completion.usage
    assert completion.choices[0].finish_reason in ("stop", "length"), completion.choices[0].finish_reason
    assert raw.headers["x-request-id"] == completion.id, "header and body should carry the same id"
    # and the request log holds the record with tokens, TTFT, latency, cost and versions
    record = _logged(stack, completion.id).record
    assert record.status == "ok" and record.response == answer, record
    assert record.completion_tokens == completion.usage.completion_tokens, record
    assert record.prompt_tokens == completion.usage.prompt_tokens, record
    assert record.ttft_ms is not None and record.ttft_ms > 0, f"TTFT should be measured: {record.ttft_ms}"
    assert record.latency_ms >= record.ttft_ms, f"latency {record.latency_ms} < ttft {record.ttft_ms}"
    assert record.cost_usd > 0, f"cost should come from the price table: {record.cost_usd}"
    assert record.model_name and record.arm == "champion", record
    assert record.user_hash and "integration-user" not in record.user_hash, "the user id must be hashed"
    # and feedback sent for it is joined to the record
    response = httpx.post(
        f"{stack.gateway_url}/v1/feedback", json={"request_id": completion.id, "score": 1, "comment": "good"}
    )
    assert response.status_code == 202, response.text
    joined = _logged(stack, completion.id, with_feedback=True).record
    assert joined.feedback is not None and joined.feedback.score == 1, joined.feedback


def test_openai_client_streams_and_the_stream_is_logged(stack: Environment) -> None:
    client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="support-assistant",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    request_id = ""
    usage = None
    finish = None
    for chunk in stream:
        request_id = chunk.id
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    text = "".join(pieces)
    assert "Paris" in text, f"the streamed answer should be right: {text!r}"
    assert finish in ("stop", "length"), f"the last chunk should carry a finish reason: {finish}"
    assert usage is not None and usage.completion_tokens > 0, f"include_usage should give usage: {usage}"
    record = _logged(stack, request_id).record
    assert record.response == text, f"the log should hold the streamed text: {record.response!r}"
    assert record.ttft_ms is not None and record.ttft_ms <= record.latency_ms, record
