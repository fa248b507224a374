"""The gateway's HTTP layer: an OpenAI-compatible API over the route table and the backend chain.

Endpoints: `POST /v1/chat/completions` (JSON, or SSE with `stream: true`), `GET /v1/models`,
`POST /v1/feedback`, `GET /healthz`, `GET /metrics`. `create_app(params, deps)` builds it;
everything with state or I/O arrives in `GatewayDeps`, so tests pass fakes.

A chat request goes: auth -> parse (strict) -> input limits (413/400) -> model and arm
(404; sticky by user/session) -> system prompt -> token rate limit (429) -> cache ->
backend (429 queue full, 502, 504) -> one `RequestRecord` to the sink -> response.
Every response carries `x-request-id`; a chat answer's body `id` is the same id, and
`/v1/feedback` refers to it.

Decisions a client can see:
- `model` is the application name, one of `model_names` (e.g. the registered model),
  or `<name>@champion` / `<name>@challenger` to pin an arm (for debugging).
- The arm is sticky per `user` (else `x-user-id`, else `x-session-id`); a request with
  none of them is assigned on its own. Those ids are logged only as keyed BLAKE2b hashes.
- The route's system prompt is put first when the client sent no system message; a
  client's own system message wins (it is kept and the route's is not added).
- `temperature` defaults to 0 (the project's greedy default, and cacheable), not 1.
- Feedback for an id in our format is accepted with 202 even when this process did
  not issue it (a sibling gateway may have; the log joins by id); an id no gateway
  could have issued is 404.
- `/metrics` and `/healthz` need no key (scrapers and probes); the rest do when keys exist.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import orjson
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel.schemas import RequestRecord
from flywheel.settings import GatewayParams
from gateway.auth import ApiKeys, warn_if_disabled
from gateway.cache import CachedAnswer, CacheHit, CacheTicket, Embed, RedisExactStore, ResponseCache
from gateway.contracts import (
    Backend,
    BackendError,
    Completion,
    CompletionRequest,
    QueueFullError,
    Route,
    RouteProvider,
    StreamDelta,
    StreamResult,
)
from gateway.errors import ApiError, from_validation_error
from gateway.limits import (
    MemoryRateLimiter,
    RateLimiter,
    RateLimitExceeded,
    RedisRateLimiter,
    Reservation,
    check_input,
    estimate_prompt_tokens,
)
from gateway.metrics import CONTENT_TYPE, NO_ARM, GatewayMetrics
from gateway.ports import RequestSink
from gateway.pricing import PriceTable
from gateway.schemas import ChatCompletionRequest, FeedbackRequest, ModelCard, ModelList
from gateway.sse import DONE, ChunkEncoder, error_event

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "flywheel.request_id"  # where the middleware leaves the id in the ASGI scope
ARM_KEY = "flywheel.arm"  # set once a route is chosen, so error metrics carry the arm
REQUEST_ID_PATTERN = re.compile(r"chatcmpl-[0-9a-f]{32}")
JSON = "application/json"
Closer = Callable[[], Awaitable[None]]


@dataclass
class GatewayDeps:
    """Everything the app talks to. `None` fields are built from params (in-memory defaults)."""

    routes: RouteProvider
    backend: Backend  # normally the fallback chain; it gets the Route inside each CompletionRequest
    sink: RequestSink
    application: str  # params.project.application: the name clients put in `model`
    keys: ApiKeys = field(default_factory=ApiKeys)  # empty: auth disabled (warned at startup)
    limiter: RateLimiter | None = None  # None: in memory, params.rate_limit_tokens_per_minute
    cache: ResponseCache | None = None  # None: in memory, params.cache, semantic with `embed`
    embed: Embed | None = None  # texts -> unit vectors; None: no semantic cache
    prices: PriceTable | None = None  # None: params.prices
    model_names: tuple[str, ...] = ()  # more names accepted in `model`, e.g. the registered model
    hash_salt: bytes = b"flywheel-gateway"  # keys the user/session hashes; set per deployment
    queue_depth: Callable[[], int] | None = None  # the local model's queue, for /healthz
    metrics: GatewayMetrics | None = None  # None: a fresh registry per app
    on_close: tuple[Closer, ...] = ()  # extra shutdown steps (e.g. the Redis client of `protection`)


class RequestIdMiddleware:
    """Gives every request an id (`chatcmpl-<uuid hex>`) and every response the `x-request-id` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pure ASGI: cheaper than a BaseHTTPMiddleware on the hot path."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"chatcmpl-{secrets.token_hex(16)}"  # a uuid4's entropy, without the UUID object
        scope[REQUEST_ID_KEY] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


@dataclass
class _Call:
    """One chat request on its way: what the record and metrics need at the end."""

    request_id: str
    started: float
    timestamp: datetime
    model: str
    route: Route
    request: CompletionRequest
    user_hash: str | None
    session_hash: str | None
    reservation: Reservation | None = None


class Gateway:
    """The handlers and the state they share."""

    def __init__(self, params: GatewayParams, deps: GatewayDeps) -> None:
        self.params = params
        self.deps = deps
        self.routes = deps.routes
        self.backend = deps.backend
        self.sink = deps.sink
        self.keys = deps.keys
        self.limiter: RateLimiter = deps.limiter or MemoryRateLimiter(params.rate_limit_tokens_per_minute)
        self.cache = deps.cache or ResponseCache(params.cache, embed=deps.embed)
        self.prices = deps.prices or PriceTable(params.prices)
        self.metrics = deps.metrics or GatewayMetrics()
        self.names = frozenset((deps.application, *deps.model_names))
        self.timeout_s = params.request_timeout_seconds
        # JSON escapes can take 6 bytes per character: refuse bodies no valid input could need.
        self.max_body = params.max_input_chars * 6 + 65_536
        self.in_flight = 0
        self.metrics.in_flight.set_function(lambda: self.in_flight)

    # -- helpers -------------------------------------------------------------------------------

    def _hash(self, value: str | None) -> str | None:
        if not value:
            return None
        return hashlib.blake2b(value.encode(), key=self.deps.hash_salt[:64], digest_size=16).hexdigest()

    def _route(self, model: str, sticky_key: str) -> Route:
        """The route for `model`, pinned by `@arm` or picked sticky by user; 404 for unknown names."""
        table = self.routes.current()
        name, pinned, arm = model.partition("@")
        known = (
            name in self.names
            or name == table.champion.model_name
            or (table.challenger is not None and name == table.challenger.model_name)
        )
        if not known:
            names = sorted({*self.names, table.champion.model_name})
            raise ApiError(
                404,
                f"the model {model!r} does not exist here; use one of {names} "
                f"(or <name>@champion / <name>@challenger to pin an arm)",
                code="model_not_found",
                param="model",
            )
        if not pinned:
            return table.pick(sticky_key)
        if arm == "champion":
            return table.champion
        if arm == "challenger":
            if table.challenger is None:
                raise ApiError(
                    404, f"{model!r}: no challenger is deployed now", code="model_not_found", param="model"
                )
            return table.challenger
        raise ApiError(
            404,
            f"{model!r}: unknown arm {arm!r}; use @champion or @challenger",
            code="model_not_found",
            param="model",
        )

    @staticmethod
    def _messages(chat: ChatCompletionRequest, route: Route) -> tuple[dict[str, str], ...]:
        messages = tuple({"role": m.role, "content": m.content} for m in chat.messages)
        if route.system_prompt and not any(m.role == "system" for m in chat.messages):
            return ({"role": "system", "content": route.system_prompt}, *messages)
        return messages

    def _record(
        self,
        call: _Call,
        *,
        response: str | None,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_s: float | None,
        latency_s: float,
        cost_usd: float,
        error: str | None = None,
        cache_hit: bool = False,
    ) -> None:
        """Hand one record to the sink (never waits)."""
        route = call.route
        record = RequestRecord(
            request_id=call.request_id,
            timestamp=call.timestamp,
            application=self.deps.application,
            arm=route.arm,
            model_name=route.model_name,
            model_version=route.model_version,
            prompt_name=route.prompt_name,
            prompt_version=route.prompt_version,
            messages=call.request.messages,  # type: ignore[arg-type]  # dicts, validated into ChatMessage
            response=response,
            finish_reason=finish_reason if error is None else "error",  # type: ignore[arg-type]  # checked by the record
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_ms=None if ttft_s is None else ttft_s * 1000,
            latency_ms=latency_s * 1000,
            cost_usd=cost_usd,
            status="ok" if error is None else "error",
            error=error,
            user_hash=call.user_hash,
            session_hash=call.session_hash,
            cache_hit=cache_hit,
        )
        self.sink.submit(record)

    def _fail(self, call: _Call, error: ApiError, kind: str) -> ApiError:
        """Log a failed request as status=error, release its tokens, and return the error to raise."""
        latency = perf_counter() - call.started
        if call.reservation is not None:
            self.limiter.settle(call.reservation, 0)
        self._record(
            call,
            response=None,
            finish_reason="error",
            prompt_tokens=0,
            completion_tokens=0,
            ttft_s=None,
            latency_s=latency,
            cost_usd=0.0,
            error=f"{kind}: {error.message}",
        )
        return error

    def _backend_error(self, call: _Call, error: BaseException) -> ApiError:
        """Map a backend failure to the HTTP error, logging the request as an error."""
        if isinstance(error, QueueFullError):
            api = ApiError(429, str(error), code="queue_full", retry_after_s=error.retry_after_s)
            return self._fail(call, api, "queue_full")
        if isinstance(error, BackendError):
            return self._fail(
                call,
                ApiError(502, f"the model backend failed: {error}", code="backend_error"),
                "backend_error",
            )
        if isinstance(error, TimeoutError):
            message = f"the model did not answer within {self.timeout_s:g}s"
            return self._fail(call, ApiError(504, message, code="timeout"), "timeout")
        logger.exception("request %s: unexpected error from the backend", call.request_id, exc_info=error)
        return self._fail(
            call, ApiError(500, "internal error in the gateway", code="internal_error"), "internal"
        )

    # -- endpoints -----------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        """`POST /v1/chat/completions`."""
        started = perf_counter()
        scope = request.scope
        request_id: str = scope[REQUEST_ID_KEY]
        headers = request.headers
        key = self.keys.identify(headers.get("authorization"))
        body = await request.body()
        if len(body) > self.max_body:
            raise ApiError(
                413,
                f"the request body is {len(body)} bytes, over this gateway's limit",
                code="input_too_large",
            )
        try:
            chat = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as error:
            raise from_validation_error(error) from None
        chars, max_tokens = check_input(
            chat,
            max_input_chars=self.params.max_input_chars,
            max_tokens_limit=self.params.max_tokens_limit,
            default_max_tokens=self.params.default_max_tokens,
        )
        user = chat.user or headers.get("x-user-id")
        session = headers.get("x-session-id")
        route = self._route(chat.model, user or session or request_id)
        scope[ARM_KEY] = route.arm
        completion_request = CompletionRequest(
            request_id=request_id,
            route=route,
            messages=self._messages(chat, route),
            max_tokens=max_tokens,
            temperature=chat.temperature if chat.temperature is not None else 0.0,
            stop=chat.stops,
            seed=chat.seed,
        )
        call = _Call(
            request_id,
            started,
            datetime.now(UTC),
            chat.model,
            route,
            completion_request,
            self._hash(user),
            self._hash(session),
        )
        try:
            call.reservation = await self.limiter.reserve(key, estimate_prompt_tokens(chars) + max_tokens)
        except RateLimitExceeded as error:
            raise ApiError(
                429, str(error), code="rate_limit_exceeded", retry_after_s=error.retry_after_s
            ) from None
        hit, ticket = await self.cache.lookup(completion_request)
        if chat.stream:
            return await self._stream(call, chat.include_usage, hit, ticket)
        if hit is not None:
            return self._answer_from_cache(call, hit)
        self.in_flight += 1
        sent = perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                completion = await self.backend.complete(completion_request)
        except Exception as error:  # mapped to 429/502/504/500 and logged; never a stack trace to the client
            raise self._backend_error(call, error) from None
        finally:
            self.in_flight -= 1
        self.cache.store(ticket, completion)
        # The backend's time to first token, counted from the request's arrival like a stream's.
        ttft = None if completion.ttft_s is None else sent - started + completion.ttft_s
        return self._answer(
            call,
            completion.text,
            completion.finish_reason,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.served_model,
            ttft,
            None,
        )

    def _answer_from_cache(self, call: _Call, hit: CacheHit) -> Response:
        answer = hit.answer
        return self._answer(
            call,
            answer.text,
            answer.finish_reason,
            answer.prompt_tokens,
            answer.completion_tokens,
            answer.served_model,
            None,
            hit.kind,
        )

    def _answer(
        self,
        call: _Call,
        text: str,
        finish_reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        served_model: str,
        ttft_s: float | None,
        cache_kind: str | None,
    ) -> Response:
        """Finish a non-streamed request: settle, record, count, respond."""
        latency = perf_counter() - call.started
        # A cache hit costs no model time: it is logged and counted at zero cost.
        cost = 0.0 if cache_kind else self.prices.cost_usd(served_model, prompt_tokens, completion_tokens)
        if call.reservation is not None:
            self.limiter.settle(call.reservation, prompt_tokens + completion_tokens)
        self._record(
            call,
            response=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=ttft_s if ttft_s is not None else latency,
            latency_s=latency,
            cost_usd=cost,
            cache_hit=cache_kind is not None,
        )
        self.metrics.answered(
            call.route.arm, 200, latency, ttft_s, prompt_tokens, completion_tokens, cost, cache_kind
        )
        body = orjson.dumps(
            {
                "id": call.request_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": call.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )
        headers = _route_headers(call.route)
        if cache_kind is not None:
            headers["x-flywheel-cache"] = cache_kind
        return Response(body, media_type=JSON, headers=headers)

    async def _stream(
        self, call: _Call, include_usage: bool, hit: CacheHit | None, ticket: CacheTicket | None
    ) -> Response:
        """Start an SSE answer; errors before the first token still get a proper status code."""
        headers = {**_route_headers(call.route), "cache-control": "no-cache"}
        encoder = ChunkEncoder(call.request_id, call.model, int(time.time()))
        if hit is not None:
            headers["x-flywheel-cache"] = hit.kind
            events = self._replay(call, encoder, hit, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        result = StreamResult()
        deltas = aiter(self.backend.stream(call.request, result))
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        self.in_flight += 1
        try:
            async with asyncio.timeout_at(deadline):
                first = await anext(deltas, None)
        except Exception as error:  # mapped to 429/502/504/500 and logged, before any byte is sent
            self.in_flight -= 1
            await _close(deltas)
            raise self._backend_error(call, error) from None
        first_at = perf_counter()
        events = self._relay(call, encoder, deltas, first, first_at, result, deadline, include_usage, ticket)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _replay(
        self, call: _Call, encoder: ChunkEncoder, hit: CacheHit, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """A cached answer as a stream of one delta."""
        answer: CachedAnswer = hit.answer
        try:
            yield encoder.role() + encoder.delta(answer.text) + encoder.finish(answer.finish_reason)
            if include_usage:
                yield encoder.usage(answer.prompt_tokens, answer.completion_tokens)
            yield DONE
        finally:
            # Logged even if the client left early: the answer was served (from the cache).
            self._end_replay(call, answer, hit)

    def _end_replay(self, call: _Call, answer: CachedAnswer, hit: CacheHit) -> None:
        """Settle, record and count a replayed cache hit."""
        latency = perf_counter() - call.started
        if call.reservation is not None:
            self.limiter.settle(call.reservation, answer.prompt_tokens + answer.completion_tokens)
        self._record(
            call,
            response=answer.text,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            ttft_s=latency,
            latency_s=latency,
            cost_usd=0.0,
            cache_hit=True,
        )
        self.metrics.answered(
            call.route.arm,
            200,
            latency,
            latency,
            answer.prompt_tokens,
            answer.completion_tokens,
            0.0,
            hit.kind,
        )

    async def _relay(
        self,
        call: _Call,
        encoder: ChunkEncoder,
        deltas: AsyncIterator[StreamDelta],
        first: StreamDelta | None,
        first_at: float,
        result: StreamResult,
        deadline: float,
        include_usage: bool,
        ticket: CacheTicket | None,
    ) -> AsyncIterator[bytes]:
        """Relay backend deltas as chunks; log the request however the stream ends."""
        parts: list[str] = []
        failure: ApiError | None = None
        finished = False
        try:
            yield encoder.role()
            delta = first
            while delta is not None:
                if delta.text:
                    parts.append(delta.text)
                    yield encoder.delta(delta.text)
                async with asyncio.timeout_at(deadline):
                    delta = await anext(deltas, None)
            completion = result.completion or _completion_from_parts(call, parts)
            yield encoder.finish(completion.finish_reason)
            if include_usage:
                yield encoder.usage(completion.prompt_tokens, completion.completion_tokens)
            yield DONE
            finished = True
        except (BackendError, QueueFullError, TimeoutError) as error:
            failure = _stream_error(error, self.timeout_s)
            yield error_event(failure)
            yield DONE
        except Exception as error:  # the status is already sent: the client gets an error event instead
            logger.exception("request %s: unexpected error while streaming", call.request_id)
            failure = ApiError(
                500, f"internal error in the gateway: {type(error).__name__}", code="internal_error"
            )
            yield error_event(failure)
            yield DONE
        finally:
            self.in_flight -= 1
            self._end_stream(call, parts, first_at, result, finished, failure, ticket)
            await _close(deltas)

    def _end_stream(
        self,
        call: _Call,
        parts: list[str],
        first_at: float,
        result: StreamResult,
        finished: bool,
        failure: ApiError | None,
        ticket: CacheTicket | None,
    ) -> None:
        """Settle, record and count a stream that ended (done, failed, or the client went away)."""
        latency = perf_counter() - call.started
        arm = call.route.arm
        if finished:
            completion = result.completion or _completion_from_parts(call, parts)
            self.cache.store(ticket, completion)
            cost = self.prices.cost_usd(
                completion.served_model, completion.prompt_tokens, completion.completion_tokens
            )
            if call.reservation is not None:
                self.limiter.settle(call.reservation, completion.prompt_tokens + completion.completion_tokens)
            ttft = first_at - call.started
            self._record(
                call,
                response=completion.text or "".join(parts),
                finish_reason=completion.finish_reason,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                ttft_s=ttft,
                latency_s=latency,
                cost_usd=cost,
            )
            self.metrics.answered(
                arm, 200, latency, ttft, completion.prompt_tokens, completion.completion_tokens, cost, None
            )
            return
        kind = (failure.code or "error") if failure is not None else "client_disconnected"
        message = failure.message if failure is not None else "the client closed the stream before the end"
        if call.reservation is not None:
            self.limiter.settle(call.reservation, estimate_prompt_tokens(sum(len(p) for p in parts)))
        self._record(
            call,
            response="".join(parts) or None,
            finish_reason="error",
            prompt_tokens=0,
            completion_tokens=0,
            ttft_s=first_at - call.started,
            latency_s=latency,
            cost_usd=0.0,
            error=f"{kind}: {message}",
        )
        if failure is None:
            self.metrics.failed(arm, 499, kind, latency)  # 499: nginx's "client closed request"
        else:
            self.metrics.failed(arm, failure.status, _metric_kind(failure), latency)

    async def feedback(self, request: Request) -> Response:
        """`POST /v1/feedback`: a score for an earlier answer, by its request id."""
        self.keys.identify(request.headers.get("authorization"))
        try:
            item = FeedbackRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise from_validation_error(error, "feedback") from None
        if not REQUEST_ID_PATTERN.fullmatch(item.request_id):
            raise ApiError(
                404,
                f"unknown request id {item.request_id!r}: ids are the `id` of a chat answer "
                "(chatcmpl-<32 hex>), also sent as the x-request-id header",
                code="request_not_found",
                param="request_id",
            )
        self.sink.submit_feedback(item.request_id, item.value, item.comment)
        body = orjson.dumps({"request_id": item.request_id, "score": item.value, "status": "accepted"})
        return Response(body, status_code=202, media_type=JSON)

    async def models(self, request: Request) -> Response:
        """`GET /v1/models`: the application, its arms, and the other accepted names."""
        self.keys.identify(request.headers.get("authorization"))
        table = self.routes.current()
        ids = [self.deps.application, f"{self.deps.application}@champion"]
        if table.challenger is not None:
            ids.append(f"{self.deps.application}@challenger")
        ids.extend(name for name in self.deps.model_names if name != self.deps.application)
        body = ModelList(data=[ModelCard(id=model_id) for model_id in ids]).model_dump_json().encode()
        return Response(body, media_type=JSON)

    async def healthz(self, request: Request) -> Response:
        """`GET /healthz`: 200 always while serving; `status` says ok or degraded, and why."""
        routes = dict(self.routes.health())
        table = self.routes.current()
        reasons: list[str] = []
        if routes.get("registry", "ok") != "ok" or routes.get("status", "ok") != "ok":
            reasons.append(f"routes: {routes.get('error') or 'the route provider is degraded'}")
        request_log = _sink_stats(self.sink)
        last_error = request_log.get("last_error") if request_log else None
        if isinstance(last_error, int | float) and last_error > 0 and time.time() - last_error < 60:
            reasons.append(f"request log: write failed {time.time() - last_error:.0f}s ago (retrying)")
        body: dict[str, Any] = {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "application": self.deps.application,
            "routes": routes,
            "arms": {
                "champion": _describe(table.champion),
                "challenger": None if table.challenger is None else _describe(table.challenger),
                "canary_weight": table.canary_weight,
                "source": table.source,
            },
            "in_flight": self.in_flight,
            "queue_depth": self.deps.queue_depth() if self.deps.queue_depth is not None else None,
            "auth": "on" if self.keys.enabled else "off",
        }
        if request_log is not None:
            body["request_log"] = request_log
        return Response(orjson.dumps(body, default=str), media_type=JSON)

    async def metrics_text(self, request: Request) -> Response:
        """`GET /metrics`: Prometheus text format."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def aclose(self) -> None:
        """Close what the app owns: backend, limiter, cache, sink, extra closers."""
        await self.backend.aclose()
        await self.limiter.aclose()
        await self.cache.aclose()
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()
        for step in self.deps.on_close:
            await step()


def _sink_stats(sink: RequestSink) -> dict[str, object] | None:
    """The sink's stats, whether `stats` is a method (`SinkWithStats`) or a property (BatchWriter's)."""
    stats = getattr(sink, "stats", None)
    if stats is None:
        return None
    return dict(stats() if callable(stats) else stats)


def _route_headers(route: Route) -> dict[str, str]:
    """Which arm and model version answered (for clients, canary debugging and tests)."""
    return {"x-flywheel-arm": route.arm, "x-flywheel-model-version": route.model_version or "base"}


def _describe(route: Route) -> Mapping[str, str | None]:
    return {
        "model": route.model_name,
        "version": route.model_version,
        "prompt": route.prompt_name,
        "prompt_version": route.prompt_version,
    }


def _completion_from_parts(call: _Call, parts: list[str]) -> Completion:
    """A backend that did not fill `StreamResult.completion`: counts estimated from the text."""
    text = "".join(parts)
    prompt_chars = sum(len(m["content"]) for m in call.request.messages)
    return Completion(
        text=text,
        finish_reason="stop",
        prompt_tokens=estimate_prompt_tokens(prompt_chars),
        completion_tokens=len(parts),
        ttft_s=None,
        latency_s=perf_counter() - call.started,
        backend="unknown",
        served_model=call.route.model_name,
    )


def _stream_error(error: BaseException, timeout_s: float) -> ApiError:
    if isinstance(error, QueueFullError):
        return ApiError(429, str(error), code="queue_full", retry_after_s=error.retry_after_s)
    if isinstance(error, TimeoutError):
        return ApiError(504, f"the model did not answer within {timeout_s:g}s", code="timeout")
    return ApiError(502, f"the model backend failed: {error}", code="backend_error")


async def _close(deltas: AsyncIterator[StreamDelta]) -> None:
    """Close a backend stream early (the local model stops generating)."""
    close = getattr(deltas, "aclose", None)
    if close is not None:
        await close()


# Metric label values must stay few: client errors are counted by kind, not by pydantic's error type.
_KINDS = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "not_found", 413: "too_large"}


def _metric_kind(error: ApiError) -> str:
    if error.status == 429:
        return "queue_full" if error.code == "queue_full" else "rate_limited"
    return (
        _KINDS.get(error.status)
        or error.code
        or ("server_error" if error.status >= 500 else "invalid_request")
    )


def _error_response(request: Request, error: ApiError, metrics: GatewayMetrics) -> Response:
    metrics.failed(request.scope.get(ARM_KEY, NO_ARM), error.status, _metric_kind(error))
    return Response(error.body(), status_code=error.status, media_type=JSON, headers=error.headers())


def protection(
    params: GatewayParams, redis_url: str | None, embed: Embed | None = None
) -> tuple[RateLimiter, ResponseCache, tuple[Closer, ...]]:
    """The rate limiter and cache for `GatewayDeps`: in memory, or on Redis when `redis_url` is set.

    With Redis every gateway process shares each key's token budget and the exact cache
    (the semantic cache stays per process). Returns the closers to put in `on_close`.
    """
    if not redis_url:
        return (
            MemoryRateLimiter(params.rate_limit_tokens_per_minute),
            ResponseCache(params.cache, embed=embed),
            (),
        )
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    limiter = RedisRateLimiter(client, params.rate_limit_tokens_per_minute)
    cache = ResponseCache(
        params.cache, embed=embed, exact_store=RedisExactStore(client, params.cache.ttl_seconds)
    )
    return limiter, cache, (client.aclose,)


def freeze_gc() -> None:
    """Move everything alive at startup out of the collector's sight.

    A serving process carries a large long-lived heap (FastAPI, pydantic, the backends'
    imports); full collections walked it for 100-230 ms at a time under load (measured
    with gc.callbacks), which showed up as the p99. Objects made after this are
    collected as usual.
    """
    gc.collect()
    gc.freeze()


def create_app(params: GatewayParams, deps: GatewayDeps, *, tune_gc: bool = True) -> FastAPI:
    """The gateway as an ASGI app; it owns `deps` and closes them at shutdown.

    With `tune_gc` the app calls `freeze_gc()` when the server starts it (lifespan
    startup), not when it is built: a process that only builds apps is left alone.
    """
    gateway = Gateway(params, deps)
    warn_if_disabled(deps.keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tune_gc:
            freeze_gc()
        yield
        await gateway.aclose()

    # FastAPI's native OpenTelemetry hooks cost a provider lookup per request; metrics are
    # Prometheus here and traces are sampled into MLflow, so they are off.
    telemetry: Any = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="Flywheel gateway", version="1", lifespan=lifespan, telemetry=telemetry)
    app.state.gateway = gateway
    # The hot path is a plain Starlette route (no dependency solving, no per-request
    # Response for dependencies: about a fifth of the app's time per request). The
    # APIRoute below it never matches; it is there so /docs shows the endpoint.
    app.router.routes.insert(0, HttpRoute("/v1/chat/completions", gateway.chat_completions, methods=["POST"]))
    app.add_api_route(
        "/v1/chat/completions",
        gateway.chat_completions,
        methods=["POST"],
        summary="Chat completion (OpenAI)",
        openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}}},
    )
    app.add_api_route("/v1/feedback", gateway.feedback, methods=["POST"], status_code=202, summary="Feedback")
    app.add_api_route("/v1/models", gateway.models, methods=["GET"], summary="Models (OpenAI)")
    app.add_api_route("/healthz", gateway.healthz, methods=["GET"], summary="Health")
    app.add_api_route("/metrics", gateway.metrics_text, methods=["GET"], summary="Prometheus metrics")

    async def on_api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return _error_response(request, error, gateway.metrics)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        api = ApiError(
            error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None
        )
        return _error_response(request, api, gateway.metrics)

    async def on_unexpected(request: Request, error: Exception) -> Response:
        # Last resort (a bug): the client gets a JSON 500 with no stack trace; the log gets the trace.
        logger.error("unhandled error in %s", request.url.path, exc_info=error)
        return _error_response(
            request, ApiError(500, "internal error in the gateway", code="internal_error"), gateway.metrics
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(RequestIdMiddleware)
    return app
