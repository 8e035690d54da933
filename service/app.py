"""The application: `create_app(settings)` builds one app per worker process.

Request path, outermost first: RequestContext (request id, access line, metrics) -> FastAPI
(its error middleware, then CORS -> BodyLimit -> router) -> `deps.current_user` -> route ->
backend -> `sse.EventStream`.

RequestContext wraps the FastAPI app from outside rather than through `add_middleware`, so
it sees uvicorn's own `send`: event streams write their body chunks straight to it instead
of through four pass-through wrappers per event (see `sse.EventStream`).
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
from .auth import TokenVerifier
from .backends import make_backend
from .body_limit import BodyLimit
from .budgets import make_budgets
from .cache import make_cache
from .config import Settings, load_settings
from .conversations import make_conversations
from .cors import CORS
from .generation import Generations
from .limits import make_limits
from .observability.logging import access_logger, get_logger
from .observability.metrics import SharedCollection
from .observability.middleware import RequestContext
from .relay import Relay
from .routes import chat, conversations, health, metrics, pages, signin, streams, usage
from .shutdown import Drain
from .state import Services
from .store import Store
from .streaming import Hooks

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
    page = pages.load_page()
    page_headers = pages.page_headers(settings.oidc_issuer)
    collection = SharedCollection()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain.bind(asyncio.get_running_loop())
        store = Store(settings.redis_url, settings.redis_ca_file) if settings.redis_url else None
        rate_limits, ip_limits, resume_limits, slots = make_limits(settings, store)
        services = app.state.services = Services(
            settings=settings,
            drain=drain,
            page=page,
            page_headers=page_headers,
            metrics=collection,
            verifier=TokenVerifier(settings),
            backend=make_backend(settings),
            store=store,
            rate_limits=rate_limits,
            ip_limits=ip_limits,
            resume_limits=resume_limits,
            slots=slots,
            budgets=make_budgets(settings.token_budget, settings.max_output_tokens, store),
            cache=make_cache(settings.cache_ttl, store),
            conversations=make_conversations(
                store,
                settings.history_turns,
                settings.history_ttl,
                settings.max_conversations_per_user,
            ),
            generations=Generations(
                drain,
                settings.resume_max_bytes,
                settings.resume_window,
                Relay(store, settings.resume_window, settings.resume_max_bytes) if store else None,
                access_logger(settings.log_level, settings.log_format, "service.generation"),
                settings.max_readers_per_stream,
            ),
            hooks=Hooks(drain, min(settings.sse_ping_seconds, settings.sse_send_timeout)),
        )
        drain.generations = services.generations
        # What exists now (modules, the app, its routes and resources) lives as long as the
        # worker: move it out of the collector's sight, so that full collections, which
        # otherwise walk all of it a few times a second under load, see only requests'
        # objects: 7% less CPU per stream, measured. Start-up's garbage goes first.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # Detached generations have no connection for uvicorn to wait for: they get the
            # rest of the graceful period here (with Redis their clients may be reading
            # them from another pod), then the drain ends them with `shutdown`.
            if drain.draining:
                await drain.until_over(services.generations.wait_ended())
            drain.unbind()
            await services.generations.aclose()
            await services.hooks.aclose()
            await services.slots.aclose()
            await services.budgets.aclose()
            await services.cache.aclose()
            await services.backend.aclose()
            await services.verifier.aclose()
            if store is not None:
                await store.aclose()

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
        conversations.router,
        usage.router,
        signin.router,
        health.router,
        metrics.router,
    )
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR, check_dir=False), name="static")
    errors.install(app)
    # Added innermost first: the last one added wraps all the others.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
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
                response = errors.error_response(404, "Not Found")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def app_factory() -> RequestContext:
    """For `uvicorn --factory service.app:app_factory` and other ASGI servers."""
    return create_app()
