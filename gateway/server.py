"""`python -m gateway`: build the gateway from params and the environment, and serve it with uvicorn.

Start-up order: routes are read from the registry once (the poller then keeps them
fresh), the champion's model is loaded and warmed, and only then does the server
accept connections, so `/healthz` answering means the first request is fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from flywheel.requestlog import BatchWriter, open_request_log
from flywheel.settings import Environment, Params, apply_offline_environ, load_params
from gateway.app import GatewayDeps, create_app, protection
from gateway.auth import ApiKeys
from gateway.backends import FallbackChain, LocalBackend, build_backends
from gateway.requestlog_sink import RequestLogSink
from gateway.routing import RegistryRouteProvider

log = logging.getLogger("flywheel.gateway")


def _local_backends(chain: FallbackChain) -> list[LocalBackend]:
    return [b for b in chain.backends if isinstance(b, LocalBackend)]


def _embedder(params: Params) -> Callable[[list[str]], Any] | None:
    """MiniLM for the semantic cache (loaded at start-up, not per request)."""
    if not params.gateway.cache.semantic:
        return None
    from flywheel.runtime import load_embedder

    embedder = load_embedder()
    return embedder.encode


def build_app(params: Params, env: Environment) -> FastAPI:
    """The gateway app with its real parts: registry routes, backends, request log, limits, cache."""
    from registry import configure_tracking

    configure_tracking(env.tracking_uri)
    gateway_params = params.gateway
    routes = RegistryRouteProvider(params.project, params.model, gateway_params.registry_poll_seconds)
    chain = build_backends(gateway_params, params.model, adapter_dir=env.home / "adapters")
    request_log = open_request_log(env.request_log_uri)
    writer = BatchWriter(request_log, gateway_params.request_log)
    sink = RequestLogSink(writer, request_log)
    embed = _embedder(params)
    # in memory, or shared by every gateway process through Redis when FLYWHEEL_REDIS_URL is set
    limiter, cache, closers = protection(gateway_params, env.redis_url, embed)
    locals_ = _local_backends(chain)
    deps = GatewayDeps(
        routes=routes,
        backend=chain,
        sink=sink,
        application=params.project.application,
        keys=ApiKeys.from_environment(env),
        limiter=limiter,
        cache=cache,
        embed=embed,
        model_names=(params.project.registered_model,),
        hash_salt=os.environ.get("FLYWHEEL_HASH_SALT", "flywheel-gateway").encode(),
        queue_depth=(lambda: sum(b.inflight for b in locals_)) if locals_ else None,
        on_close=closers,
    )
    app = create_app(gateway_params, deps)
    _start_routes_and_warm(app, routes, locals_)
    return app


def _start_routes_and_warm(app: FastAPI, routes: RegistryRouteProvider, locals_: list[LocalBackend]) -> None:
    """Wrap the app's lifespan: read routes and warm the champion before serving; stop polling after."""
    inner: Callable[[FastAPI], Any] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        # The first registry read may wait for an unreachable MLflow: keep it off the loop.
        await asyncio.to_thread(routes.start)
        table = routes.current()
        for backend in locals_:
            log.info("warming %s for %s", backend.name, table.champion.model_version or "the base model")
            await backend.warm(table.champion)
            if table.challenger is not None:
                await backend.warm(table.challenger)
        async with inner(application):
            yield
        routes.stop()

    app.router.lifespan_context = lifespan


def main(argv: list[str] | None = None) -> None:
    """Serve the gateway (uvicorn, uvloop, httptools, no access log: the request log is the record)."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    env_defaults = Environment()
    parser.add_argument("--host", default=env_defaults.host)
    parser.add_argument("--port", type=int, default=env_defaults.gateway_port)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    apply_offline_environ()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    app = build_app(load_params(), Environment())
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )
