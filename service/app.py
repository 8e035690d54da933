"""The application: `create_app(settings)` builds one app per worker process.

The request path is written out in `service/__init__.py`. The parts a worker's requests
share are made in the lifespan (services.py), once per worker.

RequestContext wraps the FastAPI app from outside rather than through `add_middleware`, so
it sees uvicorn's own `send`: event streams write their body chunks straight to it instead
of through four pass-through wrappers per event (see `response.EventStream`).
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__, errors
from .body_limit import BodyLimit
from .config import Settings, load_settings
from .cors import CORS
from .observability.logging import access_logger, get_logger
from .observability.middleware import RequestContext
from .page import STATIC_DIR
from .routes import (
    chat,
    completions,
    conversations,
    health,
    metrics,
    pages,
    signin,
    streams,
    usage,
)
from .services import build
from .shutdown import Drain

log = get_logger("service.app")


def create_app(settings: Settings | None = None) -> RequestContext:
    """The ASGI app for a server; `.app` is the FastAPI application inside."""
    settings = settings or load_settings()
    log = access_logger(settings.log_level, settings.log_format)
    return RequestContext(create_fastapi(settings), log)


def create_fastapi(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    if not settings.has_key:
        # Only reachable outside `chat-service serve` (which shares one secret across its
        # workers); production settings never get here (config refuses to start).
        settings = settings.model_copy(update={"jwt_secret": secrets.token_urlsafe(32)})
        log.warning("no signing key configured; using a random per-process development key")

    drain = Drain(settings.graceful_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain.bind(asyncio.get_running_loop())
        services = app.state.services = build(settings, drain)
        # What exists now (modules, the app, its routes and resources) lives as long as the
        # worker: move it out of the collector's sight, so that full collections, which
        # otherwise walk all of it a few times a second under load, see only requests'
        # objects: 7% less CPU per stream, measured. Start-up's garbage goes first.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="chat-service",
        version=__version__,
        summary="Streams AI chat replies over Server-Sent Events.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks asked the OTel API on every request whether a
        # provider was set (an environment look-up each time: 3% of a worker under load).
        # This service reports through Prometheus and its JSON log lines instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    routers = (
        pages.router,
        streams.router,  # before chat's: `/chat/{message}` matches `/chat/streams/...` too
        chat.router,
        completions.router,
        conversations.router,
        usage.router,
        signin.router,
        health.router,
        metrics.router,
    )
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    errors.install(app)
    # Added innermost first: the last one added wraps all the others.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORS, origins=settings.cors_origins)
    if settings.metrics_port:
        app.add_middleware(MetricsPortSplit, metrics_port=settings.metrics_port)
    return app


PROBES = frozenset({"/healthz", "/readyz"})


class MetricsPortSplit:
    """With CHAT_METRICS_PORT set, `/metrics` answers on that port only, so an Ingress
    routing the main port can never expose it; the probes answer there too (the chart's
    probes use that port), where client connections never crowd them out. Nothing else
    answers there."""

    def __init__(self, app: ASGIApp, metrics_port: int) -> None:
        self.app = app
        self.metrics_port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_metrics_port = server is not None and server[1] == self.metrics_port
            path = scope["path"]
            if on_metrics_port:
                allowed = path == "/metrics" or path in PROBES
            else:
                allowed = path != "/metrics"
            if not allowed:
                response = errors.error_response(404, "Not Found", None, path)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def app_factory() -> RequestContext:
    """For `uvicorn --factory service.app:app_factory` and other ASGI servers."""
    return create_app()
