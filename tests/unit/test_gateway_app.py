"""The gateway's HTTP layer end to end, in-process, with an echoing backend and an in-memory sink.

Most tests use Starlette's TestClient; the official `openai` client needs a real HTTP
server, so those run uvicorn in a background thread on a free loopback port.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from flywheel.settings import CacheParams, GatewayParams, PriceParams
from gateway.app import GatewayDeps, create_app
from gateway.auth import ApiKeys
from gateway.contracts import RouteTable
from gateway.limits import MemoryRateLimiter, RateLimiter
from gateway.ports import MemorySink
from gateway.schemas import ChatCompletion, ChatCompletionChunk
from tests.helpers.fake_gateway import (
    BACKEND_ERROR,
    FAIL_MID_STREAM,
    QUEUE_FULL,
    BagOfWordsEmbedder,
    EchoBackend,
    StaticRoutes,
    route,
)
from tests.helpers.servers import serve_in_thread

APP = "support-assistant"
KEY = "sk-test-alice-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
# TestClient's responses are httpx2's or httpx's, whichever Starlette found: typed loosely.
Reply = Any
PRICES = {"echo-model": PriceParams(input=1.0, output=2.0), "default": PriceParams(input=0.0, output=0.0)}


def params(**overrides: Any) -> GatewayParams:
    """Gateway params with test prices and the given overrides."""
    return GatewayParams(**{"prices": PRICES, **overrides})


@dataclass
class Harness:
    """An app with its fakes, and a client bound to it."""

    app: FastAPI
    client: TestClient
    backend: EchoBackend
    sink: MemorySink
    routes: StaticRoutes

    def chat(self, content: str = "hello there", headers: dict[str, str] | None = None, **body: Any) -> Reply:
        """POST one chat request as the test key."""
        payload = {"model": APP, "messages": [{"role": "user", "content": content}], **body}
        return self.client.post("/v1/chat/completions", json=payload, headers={**AUTH, **(headers or {})})

    def record(self, response: Reply) -> Any:
        """The logged record of a response, by its request id."""
        return self.sink.by_id(response.headers["x-request-id"])


def build(
    gateway_params: GatewayParams | None = None,
    *,
    keys: ApiKeys | None = None,
    table: RouteTable | None = None,
    embed: BagOfWordsEmbedder | None = None,
    limiter: RateLimiter | None = None,
) -> tuple[FastAPI, EchoBackend, MemorySink, StaticRoutes]:
    """An app over fakes."""
    backend, sink = EchoBackend(), MemorySink()
    routes = StaticRoutes(table) if table is not None else StaticRoutes()
    deps = GatewayDeps(
        routes=routes,
        backend=backend,
        sink=sink,
        application=APP,
        keys=keys if keys is not None else ApiKeys.from_pairs([("alice", KEY)]),
        embed=embed,
        limiter=limiter,
        model_names=("flywheel-support",),
    )
    return create_app(gateway_params or params(), deps, tune_gc=False), backend, sink, routes


@pytest.fixture
def make() -> Iterator[Any]:
    """Builds harnesses; closes their clients (and so the apps) after the test."""
    clients: list[TestClient] = []

    def _make(gateway_params: GatewayParams | None = None, **kwargs: Any) -> Harness:
        app, backend, sink, routes = build(gateway_params, **kwargs)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return Harness(app, client, backend, sink, routes)

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def gw(make: Any) -> Harness:
    """The default harness: auth on, caches on (exact), generous limits."""
    harness: Harness = make()
    return harness


def metric(harness: Harness, name: str, **labels: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    text = harness.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body."""
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


# -- the official client, over a real server ---------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, MemorySink]]:
    """The app under uvicorn on a free loopback port, in a background thread."""
    app, _backend, sink, _routes = build()
    with serve_in_thread(app) as base_url:
        yield f"{base_url}/v1", sink


def test_openai_client_non_streaming_works_unchanged(served: tuple[str, MemorySink]) -> None:
    # given the official client pointed at the gateway
    base_url, sink = served
    client = OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    # when it asks for a completion
    raw = client.chat.completions.with_raw_response.create(
        model=APP, messages=[{"role": "user", "content": "what is two plus two"}], max_tokens=64
    )
    completion = raw.parse()
    # then the answer, usage and id are what an OpenAI server would send
    assert completion.choices[0].message.content == "echo: what is two plus two", "the echo comes back"
    assert completion.choices[0].finish_reason == "stop", "a short echo stops by itself"
    assert completion.usage is not None and completion.usage.completion_tokens == 6, "usage counts the echo"
    assert completion.usage.prompt_tokens == 4 + 5, "usage counts the system prompt and the question"
    assert completion.id.startswith("chatcmpl-"), f"an OpenAI-style id: {completion.id}"
    assert raw.headers["x-request-id"] == completion.id, "the header and the body carry one id"
    assert sink.by_id(completion.id) is not None, "the request was logged under that id"


def test_openai_client_streaming_works_unchanged(served: tuple[str, MemorySink]) -> None:
    # given the official client pointed at the gateway
    base_url, sink = served
    client = OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    # when it streams a completion with usage
    stream = client.chat.completions.create(
        model=APP,
        messages=[{"role": "user", "content": "stream me five words please"}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.7,
    )
    chunks = list(stream)
    # then the deltas add up to the echo and the last chunk carries the usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me five words please", f"the deltas make the echo: {text!r}"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 6, "one delta per word"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6, "usage comes last"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop", (
        "the finish reason is sent"
    )
    assert len({c.id for c in chunks}) == 1, "every chunk carries the same id"
    record = sink.by_id(chunks[0].id)
    assert record is not None and record.response == text, "the streamed answer was logged whole"
    assert record.ttft_ms is not None and record.ttft_ms <= record.latency_ms, "a stream logs its TTFT"


def test_openai_client_sees_errors_as_its_own_exceptions(served: tuple[str, MemorySink]) -> None:
    # given the official client with a wrong key, and one asking for an unknown model
    base_url, _ = served
    import openai

    # when / then each gets the client's own exception for the status
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).chat.completions.create(
            model=APP, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        OpenAI(base_url=base_url, api_key=KEY, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )


# -- responses, ids, records -------------------------------------------------------------------


def test_response_carries_request_id_in_header_and_body_and_matches_the_schema(gw: Harness) -> None:
    # when a client asks
    response = gw.chat("hi")
    # then the id is in both places, and the body is a valid chat.completion
    assert response.status_code == 200, response.text
    body = ChatCompletion.model_validate(response.json())
    assert body.id == response.headers["x-request-id"], "header and body agree"
    assert body.model == APP, "the model field echoes the requested name"
    assert response.headers["x-flywheel-arm"] == "champion", "the arm is visible for debugging"


def test_every_response_carries_a_request_id(gw: Harness) -> None:
    # when clients call every endpoint, including a missing one
    responses = [
        gw.client.get("/healthz"),
        gw.client.get("/metrics"),
        gw.client.get("/v1/models", headers=AUTH),
        gw.client.get("/no/such/path"),
        gw.client.post("/v1/chat/completions", content=b"{"),
    ]
    # then each has its own id
    ids = [r.headers.get("x-request-id", "") for r in responses]
    assert all(i.startswith("chatcmpl-") for i in ids), f"ids on every response: {ids}"
    assert len(set(ids)) == len(ids), "ids are unique"


def test_record_holds_every_field(gw: Harness) -> None:
    # when a user with a session asks
    response = gw.chat("how do refunds work", headers={"x-session-id": "session-42"}, user="user-7")
    # then one record holds arm, versions, tokens, timings, cost and hashed ids
    record = gw.record(response)
    assert record is not None, "the request was logged"
    usage = response.json()["usage"]
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    ), "the record's tokens are the response's usage"
    assert record.application == APP and record.arm == "champion", "application and arm"
    assert (record.model_name, record.model_version) == ("test-model", "1"), "model and version of the route"
    assert (record.prompt_name, record.prompt_version) == ("test-prompt", "1"), (
        "prompt and version of the route"
    )
    assert [m.role for m in record.messages] == ["system", "user"], "the messages as the model saw them"
    assert record.response == "echo: how do refunds work" and record.finish_reason == "stop", "the answer"
    expected_cost = (record.prompt_tokens * 1.0 + record.completion_tokens * 2.0) / 1e6
    assert record.cost_usd == pytest.approx(expected_cost), "cost from prices[served model], per 1M tokens"
    assert record.status == "ok" and record.error is None and not record.cache_hit, "a plain success"
    assert record.latency_ms >= 0 and record.ttft_ms is not None, "timings are recorded"
    assert record.user_hash and "user-7" not in record.user_hash, "the user id is hashed"
    assert record.session_hash and "session-42" not in record.session_hash, "the session id is hashed"
    again = gw.record(gw.chat("another question", headers={"x-session-id": "session-42"}, user="user-7"))
    assert (again.user_hash, again.session_hash) == (record.user_hash, record.session_hash), (
        "hashes are stable"
    )


def test_unpriced_model_falls_back_to_the_default_price(make: Any) -> None:
    # given a price table without the served model
    harness: Harness = make(params(prices={"default": PriceParams(input=10.0, output=0.0)}))
    # when a request is answered
    record = harness.record(harness.chat("price me"))
    # then the default price applies
    assert record.cost_usd == pytest.approx(record.prompt_tokens * 10.0 / 1e6), "prices['default'] is used"


@pytest.mark.parametrize(
    ("messages", "first_system"),
    [
        ([{"role": "user", "content": "hi"}], "You are a test."),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "Be brief."),
        ([{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}], "Be terse."),
    ],
    ids=["route-prompt-added", "client-system-kept", "developer-is-system"],
)
def test_system_prompt_of_the_route_unless_the_client_sent_one(
    gw: Harness, messages: list[dict[str, str]], first_system: str
) -> None:
    # when a request comes with or without its own system message
    response = gw.client.post("/v1/chat/completions", json={"model": APP, "messages": messages}, headers=AUTH)
    # then exactly one system message goes to the model: the client's if any, else the route's
    sent = gw.backend.calls[-1].messages
    assert response.status_code == 200, response.text
    assert [m["content"] for m in sent if m["role"] == "system"] == [first_system], f"system messages: {sent}"


@pytest.mark.parametrize(
    "model",
    [APP, "flywheel-support", "test-model", f"{APP}@champion"],
    ids=["app", "registered", "route", "pin"],
)
def test_model_names_accepted(gw: Harness, model: str) -> None:
    # when the model is the application, the registered model, the route's model or a pinned arm
    response = gw.client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
    )
    # then it is served
    assert response.status_code == 200, f"{model}: {response.text}"


def test_challenger_pin_and_models_list(make: Any) -> None:
    # given a challenger at 0% canary
    table = RouteTable(champion=route(), challenger=route("challenger", version="2"), canary_weight=0.0)
    harness: Harness = make(table=table)
    # when a client pins the challenger, and lists the models
    pinned = harness.chat("hi", model=f"{APP}@challenger")
    listed = harness.client.get("/v1/models", headers=AUTH).json()
    # then the challenger answers and the list names both arms
    assert pinned.status_code == 200 and pinned.headers["x-flywheel-arm"] == "challenger", pinned.text
    assert harness.record(pinned).model_version == "2", "the challenger's version is logged"
    ids = [m["id"] for m in listed["data"]]
    assert ids[:3] == [APP, f"{APP}@champion", f"{APP}@challenger"], f"models: {ids}"


# -- feedback ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rating", "score"), [({"score": 1}, 1), ({"score": -1}, -1), ({"thumbs": "down"}, -1), ({"score": 0}, 0)]
)
def test_feedback_for_a_known_id_is_accepted(gw: Harness, rating: dict[str, Any], score: int) -> None:
    # given an answered request
    request_id = gw.chat("rate me").json()["id"]
    # when the client rates it
    response = gw.client.post(
        "/v1/feedback", json={"request_id": request_id, "comment": "ok", **rating}, headers=AUTH
    )
    # then it is accepted and reaches the log with the score
    assert response.status_code == 202, response.text
    assert gw.sink.feedback[-1].request_id == request_id, "feedback is joined by request id"
    assert (gw.sink.feedback[-1].score, gw.sink.feedback[-1].comment) == (score, "ok"), "score and comment"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"request_id": "not-one-of-ours", "score": 1}, 404),
        ({"request_id": "chatcmpl-" + "0" * 32, "score": 2}, 400),
        ({"request_id": "chatcmpl-" + "0" * 32, "score": 1, "thumbs": "up"}, 400),
        ({"request_id": "chatcmpl-" + "0" * 32}, 400),
        ({"score": 1}, 400),
    ],
    ids=["foreign-id", "bad-score", "both-ratings", "no-rating", "no-id"],
)
def test_feedback_refused(gw: Harness, body: dict[str, Any], status: int) -> None:
    # when feedback names an id no gateway issued, or is malformed
    response = gw.client.post("/v1/feedback", json=body, headers=AUTH)
    # then it is refused with an OpenAI-style error and nothing reaches the log
    assert response.status_code == status, response.text
    assert "message" in response.json()["error"], "an OpenAI-style error body"
    assert not gw.sink.feedback, "nothing was logged"


def test_feedback_for_a_well_formed_unknown_id_is_accepted(gw: Harness) -> None:
    # when feedback names an id of our format this process never issued (a sibling gateway may have)
    response = gw.client.post(
        "/v1/feedback", json={"request_id": "chatcmpl-" + "a" * 32, "score": 1}, headers=AUTH
    )
    # then it is accepted and left to the log to join
    assert response.status_code == 202, response.text


# -- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key"),
        ({"Authorization": f"Basic {KEY}"}, "invalid_api_key"),
        ({"Authorization": "Bearer "}, "invalid_api_key"),
    ],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
def test_missing_or_bad_key_is_401(gw: Harness, headers: dict[str, str], code: str) -> None:
    # when a request comes without a good key
    payload = {"model": APP, "messages": [{"role": "user", "content": "hi"}]}
    response = gw.client.post("/v1/chat/completions", json=payload, headers=headers)
    # then 401 with an OpenAI-style error, the model untouched
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "authentication_error"), f"error: {error}"
    assert not gw.backend.calls, "the backend was not called"


def test_auth_off_without_keys_warns_loudly(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    # when an app starts with no keys configured
    with caplog.at_level("WARNING", logger="gateway.auth"):
        harness: Harness = make(keys=ApiKeys())
    # then it serves without a key and the log says auth is off
    payload = {"model": APP, "messages": [{"role": "user", "content": "hi"}]}
    assert harness.client.post("/v1/chat/completions", json=payload).status_code == 200, "no key needed"
    assert "AUTH IS DISABLED" in caplog.text, "a loud warning at startup"


def test_the_key_is_never_logged(gw: Harness, caplog: pytest.LogCaptureFixture) -> None:
    # when requests with good and bad keys pass
    with caplog.at_level("DEBUG"):
        gw.chat("hi")
        gw.client.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer sk-secret-guess"})
    # then neither key appears in the log or the records
    assert KEY not in caplog.text and "sk-secret-guess" not in caplog.text, "keys never reach the log"
    assert all(KEY not in r.model_dump_json() for r in gw.sink.records), "keys never reach the records"


# -- bad requests ------------------------------------------------------------------------------


BAD_REQUESTS: list[tuple[str, bytes, int, str | None]] = [
    ("malformed-json", b'{"model": "support-assistant", "messages": [', 400, "invalid_json"),
    ("not-an-object", b"[1, 2]", 400, "model_type"),
    (
        "content-not-string",
        b'{"model": "support-assistant", "messages": [{"role": "user", "content": 5}]}',
        400,
        "string_type",
    ),
    (
        "max-tokens-string",
        b'{"model": "support-assistant", "max_tokens": "5", "messages": [{"role": "user", "content": "hi"}]}',
        400,
        "int_type",
    ),
    (
        "stream-string",
        b'{"model": "support-assistant", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}',
        400,
        "bool_type",
    ),
    (
        "bad-role",
        b'{"model": "support-assistant", "messages": [{"role": "wizard", "content": "hi"}]}',
        400,
        "literal_error",
    ),
    ("no-messages", b'{"model": "support-assistant", "messages": []}', 400, "too_short"),
    ("no-model", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "missing"),
    (
        "n-two",
        b'{"model": "support-assistant", "n": 2, "messages": [{"role": "user", "content": "hi"}]}',
        400,
        "value_error",
    ),
    (
        "tools",
        b'{"model": "support-assistant", "tools": [{"type": "function"}], '
        b'"messages": [{"role": "user", "content": "hi"}]}',
        400,
        "value_error",
    ),
    (
        "json-mode",
        b'{"model": "support-assistant", "response_format": {"type": "json_object"}, '
        b'"messages": [{"role": "user", "content": "hi"}]}',
        400,
        "value_error",
    ),
    (
        "image-part",
        b'{"model": "support-assistant", "messages": [{"role": "user", '
        b'"content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
        400,
        "value_error",
    ),
    (
        "temperature-high",
        b'{"model": "support-assistant", "temperature": 3, "messages": [{"role": "user", "content": "hi"}]}',
        400,
        "less_than_equal",
    ),
    (
        "absurd-max-tokens",
        b'{"model": "support-assistant", "max_tokens": 1000000, '
        b'"messages": [{"role": "user", "content": "hi"}]}',
        400,
        "max_tokens_too_large",
    ),
    (
        "oversize",
        b'{"model": "support-assistant", "messages": [{"role": "user", "content": "'
        + b"x" * 20_000
        + b'"}]}',
        413,
        "input_too_large",
    ),
    (
        "unknown-model",
        b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
        404,
        "model_not_found",
    ),
    (
        "unknown-arm",
        b'{"model": "support-assistant@canary", "messages": [{"role": "user", "content": "hi"}]}',
        404,
        "model_not_found",
    ),
    (
        "no-challenger",
        b'{"model": "support-assistant@challenger", "messages": [{"role": "user", "content": "hi"}]}',
        404,
        "model_not_found",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request_is_a_clear_4xx_and_the_app_keeps_serving(
    gw: Harness, body: bytes, status: int, code: str | None
) -> None:
    # when a bad request arrives
    response = gw.client.post(
        "/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    # then it gets a clear OpenAI-style error, no stack trace, and the next request is served
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, f"error code: {error}"
    assert error["message"] and "Traceback" not in response.text, "a message, never a stack trace"
    assert set(error) == {"message", "type", "param", "code"}, "OpenAI's error shape"
    assert not gw.backend.calls, "the backend never saw it"
    assert gw.chat("still there?").status_code == 200, "the app keeps serving"


def test_error_messages_name_the_limit(gw: Harness) -> None:
    # when a request is too large or asks for too many tokens
    too_big = gw.chat("x" * 16_001).json()["error"]["message"]
    too_many = gw.chat("hi", max_tokens=513).json()["error"]["message"]
    # then the message names the limit and its value
    assert "max_input_chars=16000" in too_big, too_big
    assert "max_tokens_limit=512" in too_many, too_many


def test_unknown_openai_fields_are_ignored(gw: Harness) -> None:
    # when the client sends fields the gateway does not use
    response = gw.chat(
        "hi",
        user="u1",
        top_p=0.9,
        frequency_penalty=0.0,
        presence_penalty=0.1,
        metadata={"a": "b"},
        response_format={"type": "text"},
        logit_bias={},
        stream_options=None,
        parallel_tool_calls=False,
    )
    # then the request is served
    assert response.status_code == 200, response.text


def test_max_completion_tokens_is_honoured(gw: Harness) -> None:
    # when the newer max_completion_tokens cuts the answer
    response = gw.chat("one two three four five", max_completion_tokens=2)
    # then the answer stops at that length
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length", "cut by max_completion_tokens"
    assert body["usage"]["completion_tokens"] == 2, "two tokens"


# -- rate limits and backend failures ----------------------------------------------------------


def test_rate_limit_is_429_with_retry_after_and_counts_real_use(make: Any) -> None:
    # given a budget of 100 tokens a minute, on a clock the test holds still
    limiter = MemoryRateLimiter(100, clock=lambda: 1_000_000.0)
    harness: Harness = make(limiter=limiter)
    # when requests reserve 60 tokens up front but use far fewer
    served = [harness.chat("hi", max_tokens=58) for _ in range(3)]
    used = limiter.used("alice")
    # then the reservations were settled to real use, so all three fit
    assert [r.status_code for r in served] == [200, 200, 200], [r.text for r in served]
    assert used == sum(r.json()["usage"]["total_tokens"] for r in served), "the budget counts real use"
    # when a request could need more than is left
    refused = harness.chat("hi", max_tokens=90)
    # then 429 with Retry-After, while a request that fits is still served
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1, "Retry-After in whole seconds"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
    assert harness.chat("hi", max_tokens=5).status_code == 200, "a smaller request still fits"
    assert metric(harness, "flywheel_gateway_rate_limited_total") == 1, "the refusal is counted"


def test_queue_full_is_429_with_retry_after_and_logged(gw: Harness) -> None:
    # when the backend's queue is full
    response = gw.chat(QUEUE_FULL)
    # then 429 with the backend's Retry-After, logged as an error
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "3", "Retry-After from the QueueFullError"
    record = gw.record(response)
    assert record is not None and record.status == "error" and "queue_full" in (record.error or ""), record
    assert metric(gw, "flywheel_gateway_queue_rejections_total", arm="champion") == 1, (
        "counted as a rejection"
    )
    assert gw.chat("next").status_code == 200, "the app keeps serving"


def test_backend_error_is_502_and_logged_as_error(gw: Harness) -> None:
    # when the backend chain fails
    response = gw.chat(BACKEND_ERROR)
    # then 502 with the message, and the request is logged with status=error
    assert response.status_code == 502, response.text
    assert "the fake backend was told to fail" in response.json()["error"]["message"], response.text
    record = gw.record(response)
    assert record is not None, "a failed request is logged"
    assert (record.status, record.finish_reason, record.response) == ("error", "error", None), record
    assert "backend_error" in (record.error or ""), record.error
    assert gw.chat("next").status_code == 200, "the app keeps serving"


def test_stream_errors_before_the_first_token_get_a_status(gw: Harness) -> None:
    # when a streamed request fails before any token
    full = gw.chat(QUEUE_FULL, stream=True)
    broken = gw.chat(BACKEND_ERROR, stream=True)
    # then the status code says so, as for a non-streamed request
    assert (full.status_code, broken.status_code) == (429, 502), (full.text, broken.text)
    assert gw.record(broken).status == "error", "logged as an error"


def test_stream_failing_midway_sends_an_error_event_and_is_logged(gw: Harness) -> None:
    # when the backend fails after the first token
    response = gw.chat(f"tell me {FAIL_MID_STREAM}", stream=True, temperature=0.5)
    # then the stream ends with an error event and [DONE], and the log says error
    events = sse_events(response.text)
    assert response.status_code == 200, "the status was sent before the failure"
    assert "error" in json.loads(events[-2]), f"an error event: {events[-2]}"
    assert events[-1] == "[DONE]", "the stream is closed properly"
    record = gw.record(response)
    assert record.status == "error" and record.response == "echo:", f"partial answer logged: {record}"


def test_stream_chunks_match_the_schema(gw: Harness) -> None:
    # when a stream is answered with usage
    response = gw.chat("a b c", stream=True, stream_options={"include_usage": True}, temperature=0.3)
    # then every chunk is a valid chat.completion.chunk and the usage chunk has no choices
    events = sse_events(response.text)
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant", "the first chunk gives the role"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None, "the last chunk is the usage"
    assert events[-1] == "[DONE]", "then [DONE]"


# -- cache -------------------------------------------------------------------------------------


def test_exact_cache_hit_is_logged_and_another_namespace_misses(gw: Harness) -> None:
    # given an answered deterministic request
    first = gw.chat("what are your opening hours")
    # when the same request (modulo whitespace) comes again
    second = gw.chat("what are  your opening hours ")
    # then it is served from the cache, logged as a hit at zero cost
    assert (
        second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    assert len(gw.backend.calls) == 1, "the backend answered once"
    record = gw.record(second)
    assert record.cache_hit and record.cost_usd == 0.0, f"a free hit: {record}"
    assert second.headers["x-flywheel-cache"] == "exact", "the hit is marked"
    assert second.json()["id"] != first.json()["id"], "a hit is a new request with its own id"
    # when the route moves to another model version (another namespace)
    gw.routes.table = RouteTable(champion=route(version="2"))
    third = gw.chat("what are your opening hours")
    # then it misses
    assert not gw.record(third).cache_hit and len(gw.backend.calls) == 2, (
        "a new version never gets old answers"
    )
    assert metric(gw, "flywheel_gateway_cache_hits_total", kind="exact") == 1, "one exact hit counted"


def test_sampled_requests_are_not_cached(gw: Harness) -> None:
    # when the same request with temperature > 0 comes twice
    gw.chat("roll a die", temperature=0.8)
    again = gw.chat("roll a die", temperature=0.8)
    # then both go to the backend
    assert not gw.record(again).cache_hit and len(gw.backend.calls) == 2, "only temperature 0 is cached"


def test_streamed_request_is_served_from_the_cache(gw: Harness) -> None:
    # given an answered request
    gw.chat("cached then streamed")
    # when the same request streams
    response = gw.chat("cached then streamed", stream=True, stream_options={"include_usage": True})
    # then the cached answer streams and is logged as a hit
    events = sse_events(response.text)
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if json.loads(e)["choices"]
    )
    assert text == "echo: cached then streamed", text
    assert gw.record(response).cache_hit, "logged as a hit"
    assert len(gw.backend.calls) == 1, "the backend answered once"


def test_semantic_cache_hit_with_a_fake_embedder(make: Any) -> None:
    # given the semantic cache on, with an embedder where word order and case do not matter
    embedder = BagOfWordsEmbedder()
    harness: Harness = make(params(cache=CacheParams(semantic_threshold=0.95)), embed=embedder)
    harness.chat("What is the capital of France?")
    # when a paraphrase with the same words comes, and an unrelated question
    near = harness.chat("the capital of France, what is")
    far = harness.chat("How do I reset my password")
    # then the paraphrase is a semantic hit and the unrelated question is not
    assert near.headers.get("x-flywheel-cache") == "semantic", near.headers
    assert harness.record(near).cache_hit, "logged as a hit"
    assert not harness.record(far).cache_hit, "an unrelated question misses"
    assert len(harness.backend.calls) == 2, "the backend answered the first and the unrelated one"
    assert metric(harness, "flywheel_gateway_cache_hits_total", kind="semantic") == 1, (
        "one semantic hit counted"
    )


def test_semantic_cache_skips_multi_turn_conversations(make: Any) -> None:
    # given the semantic cache on and a cached single question
    harness: Harness = make(embed=BagOfWordsEmbedder())
    harness.chat("What is the capital of France?")
    # when the same words end a conversation with earlier turns
    messages = [
        {"role": "user", "content": "I am planning a trip."},
        {"role": "assistant", "content": "Nice."},
        {"role": "user", "content": "the capital of France, what is"},
    ]
    response = harness.client.post(
        "/v1/chat/completions", json={"model": APP, "messages": messages}, headers=AUTH
    )
    # then it goes to the model (context may change the answer)
    assert not harness.record(response).cache_hit, "no semantic hit across turns"


# -- metrics and health ------------------------------------------------------------------------


def test_metrics_count_requests_tokens_and_errors(gw: Harness) -> None:
    # when three requests succeed and one is refused
    answers = [gw.chat(f"question number {i}").json() for i in range(3)]
    gw.chat("hi", model="nope")
    # then /metrics counts them, with tokens and latency per arm
    assert metric(gw, "flywheel_gateway_requests_total", arm="champion", status="ok", code="200") == 3, "3 ok"
    assert metric(gw, "flywheel_gateway_requests_total", arm="none", status="error", code="404") == 1, (
        "1 refused"
    )
    assert metric(gw, "flywheel_gateway_prompt_tokens_total", arm="champion") == sum(
        a["usage"]["prompt_tokens"] for a in answers
    ), "prompt tokens"
    assert metric(gw, "flywheel_gateway_completion_tokens_total", arm="champion") == sum(
        a["usage"]["completion_tokens"] for a in answers
    ), "completion tokens"
    assert metric(gw, "flywheel_gateway_request_latency_seconds_count", arm="champion") == 3, (
        "latency observed"
    )
    assert metric(gw, "flywheel_gateway_ttft_seconds_count", arm="champion") == 3, "TTFT observed"
    assert metric(gw, "flywheel_gateway_cost_usd_total", arm="champion") > 0, "cost counted"
    assert gw.client.get("/metrics").headers["content-type"].startswith("text/plain"), (
        "Prometheus text format"
    )


def test_two_apps_keep_separate_metrics(make: Any) -> None:
    # given two apps in one process
    first: Harness = make()
    second: Harness = make()
    # when only the first serves
    first.chat("hi")
    # then the second counts nothing
    assert metric(first, "flywheel_gateway_requests_total", arm="champion", status="ok", code="200") == 1
    assert metric(second, "flywheel_gateway_requests_total", arm="champion", status="ok", code="200") == 0, (
        "each app has its own registry"
    )


def test_healthz_reports_degraded_routes_with_200(gw: Harness) -> None:
    # given a healthy app
    assert gw.client.get("/healthz").json()["status"] == "ok", "healthy at first"
    # when the route provider cannot reach the registry
    gw.routes.state = {"registry": "degraded", "last_success": 0.0, "error": "registry unreachable"}
    response = gw.client.get("/healthz")
    # then /healthz still answers 200 but says degraded, and why
    body = response.json()
    assert response.status_code == 200, "200 even when degraded (the gateway still serves)"
    assert body["status"] == "degraded" and body["routes"]["error"] == "registry unreachable", body
    assert body["arms"]["champion"]["version"] == "1" and body["in_flight"] == 0, body
    assert body["request_log"]["kind"] == "memory", "the sink's stats are shown"


def test_app_closes_the_backend_at_shutdown() -> None:
    # given a running app
    app, backend, _sink, _routes = build()
    with TestClient(app) as client:
        client.get("/healthz")
        assert not backend.closed, "open while serving"
    # then shutdown closed it
    assert backend.closed, "the app owns its backend"


# -- canary ------------------------------------------------------------------------------------


def test_sticky_canary_sends_a_quarter_of_users_to_the_challenger(make: Any) -> None:
    # given a challenger at canary weight 0.25
    table = RouteTable(champion=route(), challenger=route("challenger", version="2"), canary_weight=0.25)
    harness: Harness = make(table=table, limiter=MemoryRateLimiter(10**9))
    # when 2000 users ask once each (half by `user`, half by session header)
    arms = []
    for i in range(2000):
        if i % 2:
            response = harness.chat("hi", user=f"user-{i}", temperature=0.5)
        else:
            response = harness.chat("hi", headers={"x-session-id": f"session-{i}"}, temperature=0.5)
        arms.append(response.headers["x-flywheel-arm"])
    # then about a quarter got the challenger, and a user keeps their arm
    share = arms.count("challenger") / len(arms)
    assert 0.21 <= share <= 0.29, f"challenger share {share:.3f}, expected 0.25 ± 0.04"
    repeat = [
        harness.chat("again", user=f"user-{i}", temperature=0.5).headers["x-flywheel-arm"]
        for i in (1, 3, 5, 7)
    ]
    assert repeat == [arms[1], arms[3], arms[5], arms[7]], "sticky: the same user gets the same arm"
    challenger_records = [r for r in harness.sink.records if r.arm == "challenger"]
    assert challenger_records and all(r.model_version == "2" for r in challenger_records), "the arm's version"


class _FailingLogSink(MemorySink):
    """A sink whose writer failed a moment ago (as BatchWriter's stats report it)."""

    def stats(self) -> dict[str, object]:
        return {"kind": "test", "pending": 3, "last_error": time.time() - 1}


def test_healthz_reports_a_failing_request_log_as_degraded() -> None:
    # given an app whose request log failed to write a second ago
    backend, sink = EchoBackend(), _FailingLogSink()
    deps = GatewayDeps(routes=StaticRoutes(), backend=backend, sink=sink, application=APP)
    with TestClient(create_app(params(), deps, tune_gc=False)) as client:
        # when a probe asks
        body = client.get("/healthz").json()
    # then it says degraded, and why
    assert body["status"] == "degraded", body
    assert any("request log" in reason for reason in body["reasons"]), body["reasons"]


def test_startup_freezes_the_gc_heap() -> None:
    # given an app built with the default GC tuning
    import gc

    deps = GatewayDeps(routes=StaticRoutes(), backend=EchoBackend(), sink=MemorySink(), application=APP)
    before = gc.get_freeze_count()
    app = create_app(params(), deps)
    assert gc.get_freeze_count() == before, "building the app freezes nothing"
    try:
        # when the server starts it
        with TestClient(app):
            frozen = gc.get_freeze_count()
        # then the startup heap was frozen (full collections no longer walk it)
        assert frozen > before, f"freeze count {before} -> {frozen}"
    finally:
        gc.unfreeze()


def test_client_leaving_a_stream_midway_is_logged_and_the_backend_stream_closed() -> None:
    # given a backend that streams slowly, and a client that leaves after the first chunk
    import asyncio

    backend, sink = EchoBackend(delta_pause_s=0.05), MemorySink()
    deps = GatewayDeps(routes=StaticRoutes(), backend=backend, sink=sink, application=APP)
    app = create_app(params(), deps, tune_gc=False)
    body = json.dumps(
        {
            "model": APP,
            "stream": True,
            "temperature": 0.5,
            "messages": [{"role": "user", "content": "a b c d e f"}],
        }
    ).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }  # fmt: skip

    async def scenario() -> list[Message]:
        sent: list[Message] = []
        first_chunk = asyncio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first_chunk.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                first_chunk.set()

        await app(scope, receive, send)
        return sent

    # when the client disconnects mid-stream
    sent = asyncio.run(scenario())
    # then the stream stopped early, the request is logged as an error, and the backend stream was closed
    chunks = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert b"[DONE]" not in b"".join(m["body"] for m in chunks), "the stream did not run to the end"
    record = sink.records[-1]
    assert record.status == "error" and "client_disconnected" in (record.error or ""), record
    assert backend.streams_closed == 1, "the app closed the backend's stream"
