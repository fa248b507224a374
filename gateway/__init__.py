"""The serving gateway: an OpenAI-compatible API in front of the champion/challenger routes.

`gateway.app.create_app(params, deps)` builds the ASGI app (`/v1/chat/completions`,
streaming too, `/v1/models`, `/v1/feedback`, `/healthz`, `/metrics`). Its parts:

- `contracts`: the seams (Route, RouteTable, Backend, CompletionRequest, ...).
- `routing`: the route table from the MLflow registry (aliases, canary weight, prompts).
- `backends`: the local SmolLM2 runtime, OpenAI-compatible servers, the fallback chain.
- `schemas`: the OpenAI wire models; `sse`: streamed chunks; `errors`: OpenAI-style errors.
- `auth`: API keys; `limits`: token rate limits (memory or Redis) and input limits;
  `cache`: exact and semantic response cache; `metrics`: Prometheus; `pricing`: cost.
- `ports`: the `RequestSink` the app logs through (`requestlog_sink` adapts the shared
  request log's `BatchWriter` to it; `MemorySink` for tests and benchmarks).
"""
