"""FastAPI dependencies: what a route needs, resolved from the request.

`CurrentUser` is the verified bearer token's principal. The others are the one part of the
worker a route needs (made in the lifespan: services.py), never the whole of it. Each is a
coroutine: FastAPI runs a plain `def` dependency in its thread pool, a hop to another thread
and back for every request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import structlog
from fastapi import Depends, Request

from .auth import AuthError, KeysUnavailable, Principal
from .budgets import TokenBudgets
from .chat import Chat
from .config import Settings
from .conversations import Conversations
from .errors import Unauthorized, Unavailable
from .observability import metrics
from .observability.logging import get_logger
from .observability.metrics import SharedCollection
from .page import Page
from .readiness import Readiness
from .record import record_of

if TYPE_CHECKING:
    from .services import Services

log = get_logger("service.auth")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _chat(request: Request) -> Chat:
    return services_of(request).chat


async def _conversations(request: Request) -> Conversations:
    return services_of(request).conversations


async def _budgets(request: Request) -> TokenBudgets:
    return services_of(request).budgets


async def _settings(request: Request) -> Settings:
    return services_of(request).settings


async def _page(request: Request) -> Page:
    return services_of(request).page


async def _readiness(request: Request) -> Readiness:
    return services_of(request).readiness


async def _collection(request: Request) -> SharedCollection:
    return services_of(request).metrics


ChatService = Annotated[Chat, Depends(_chat)]
ConversationStore = Annotated[Conversations, Depends(_conversations)]
Budgets = Annotated[TokenBudgets, Depends(_budgets)]
AppSettings = Annotated[Settings, Depends(_settings)]
ThePage = Annotated[Page, Depends(_page)]
Ready = Annotated[Readiness, Depends(_readiness)]
Collection = Annotated[SharedCollection, Depends(_collection)]


async def current_user(request: Request) -> Principal:
    started = time.perf_counter()
    try:
        return await _verify(request)
    finally:
        record_of(request.scope).timing.auth = (time.perf_counter() - started) * 1000


async def _verify(request: Request) -> Principal:
    header = request.headers.get("authorization")
    if header is None:
        metrics.auth_failures.labels("missing").inc()
        await spend_address_budget(request)
        raise Unauthorized("missing bearer token", error=None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        metrics.auth_failures.labels("malformed").inc()
        await spend_address_budget(request)
        raise Unauthorized("authorization header is not 'Bearer <token>'")
    verifier = services_of(request).verifier
    try:
        principal = await verifier.verify(token)
    except AuthError as exc:
        metrics.auth_failures.labels(exc.reason).inc()
        await spend_address_budget(request)
        raise Unauthorized(exc.description) from None
    except KeysUnavailable:
        metrics.auth_failures.labels("keys_unavailable").inc()
        raise Unavailable("token keys are unavailable; try again shortly") from None
    except Exception as exc:
        # Hostile input must never become a 500: whatever a token made the verifier (or a
        # key library under it) raise, it is refused. The type says where to look; the
        # message could quote the token, so it stays out of the log.
        log.warning("token verification raised", error=type(exc).__name__)
        metrics.auth_failures.labels("malformed").inc()
        await spend_address_budget(request)
        raise Unauthorized("token is malformed") from None
    record_of(request.scope).user = principal.sub
    structlog.contextvars.bind_contextvars(user=principal.sub)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


async def spend_address_budget(request: Request) -> None:
    """Spend one from the client address's budget (CHAT_IP_RATE_LIMIT), which failed
    authentications and unauthenticated streams share; 429 once it is spent.

    The address is the peer's, or, when the peer is one of CHAT_TRUSTED_PROXIES, the
    X-Forwarded-For entry that proxy added (uvicorn's proxy headers take the right-most
    untrusted entry), never one a client wrote itself."""
    client = request.client
    await services_of(request).addresses.spend(client.host if client is not None else "unknown")
