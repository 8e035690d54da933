"""A worker's parts, made once in the app's lifespan (`build`) and closed there (`aclose`).

This is the one place that knows every part: with Redis or without (each part's twin is
chosen here, once), in what order admission's gates run, who is handed what. Routes reach
only the part they need (deps.py); no part is handed the whole of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import completions
from .admission import Admission, Gate
from .admission.budget import BudgetGate
from .admission.rate import RateGate, RateLimits, make_windows
from .admission.slots import SlotGate, StreamSlots, make_slots
from .admission.ticket import TicketGate
from .auth import TokenVerifier
from .backends import Backend, make_backend
from .budgets import TokenBudgets, make_budgets
from .cache import ResponseCache, make_cache
from .chat import Chat
from .config import Settings
from .conversations import Conversations, make_conversations
from .events import EVENTS, Codec
from .generations import Elsewhere, Generations, Local
from .observability.logging import access_logger
from .observability.metrics import SharedCollection
from .page import Page, load_page
from .readiness import Readiness
from .redis import keys
from .redis.relay import Relay
from .redis.store import Store
from .response import Responses
from .shutdown import Drain


@dataclass(slots=True)
class Services:
    settings: Settings
    drain: Drain
    page: Page
    readiness: Readiness
    metrics: SharedCollection
    verifier: TokenVerifier
    addresses: RateGate  # failed authentications and unauthenticated streams, per address
    chat: Chat
    conversations: Conversations
    budgets: TokenBudgets
    # Reached by the in-process tests as well as by the parts above.
    generations: Generations
    cache: ResponseCache
    slots: StreamSlots
    closing: list[Any] = field(default_factory=list)  # closed in this order by `aclose`

    async def aclose(self) -> None:
        # Detached generations have no connection for uvicorn to wait for: they get the
        # rest of the graceful period here (with Redis their clients may be reading them
        # from another pod), then the drain ends them with `shutdown`.
        if self.drain.draining:
            await self.drain.until_over(self.generations.wait_ended())
        self.drain.unbind()
        for part in self.closing:
            await part.aclose()


class _Redis:
    """Redis as `/readyz` sees it."""

    name = "redis"

    def __init__(self, store: Store) -> None:
        self.store = store

    async def ping(self) -> bool:
        return await self.store.ping()


def build(settings: Settings, drain: Drain) -> Services:
    """Every part of a worker, each with what it needs and nothing more."""
    store = Store(settings.redis_url, settings.redis_ca_file) if settings.redis_url else None
    windows = make_windows(store)
    backend: Backend = make_backend(settings)
    budgets = make_budgets(settings.token_budget, settings.max_output_tokens, store)
    cache = make_cache(settings.cache_ttl, store)
    slots = make_slots(settings.max_streams_per_user, store, settings.stream_lease_seconds)
    conversations = make_conversations(
        store, settings.history_turns, settings.history_ttl, settings.max_conversations_per_user
    )
    codecs: dict[str, Codec] = {EVENTS.name: EVENTS, completions.NAME: completions.FOLLOWER}
    elsewhere: Elsewhere = Relay(store, settings.resume_window, codecs) if store else Local()
    generations = Generations(
        elsewhere,
        drain,
        settings.resume_max_bytes,
        settings.resume_window,
        settings.max_readers_per_stream,
        access_logger(settings.log_level, settings.log_format, "service.generation"),
    )
    drain.generations = generations
    responses = Responses(drain, generations, settings.sse_ping_seconds, settings.sse_send_timeout)
    # Admission's gates, in the order their refusals count.
    ticket = TicketGate(cache, backend.name, backend.model, settings.cache_scope == "user")
    gates: list[Gate] = [
        RateGate(
            RateLimits(settings.rate_limit, windows),
            keys.rate_window,
            "requests",
            "rate",
            "rate limit reached",
        ),
        SlotGate(slots),
    ]
    if budgets.enabled:
        gates.append(BudgetGate(budgets))
    gates.append(ticket)
    resumes = RateGate(
        RateLimits(settings.resume_rate_limit, windows),
        keys.resume_window,
        "resumes",
        "resume",
        "too many resumes",
    )
    addresses = RateGate(
        RateLimits(settings.ip_rate_limit, windows),
        keys.address_window,
        "address",
        "ip",
        "too many failed or unauthenticated requests from this address",
    )
    chat = Chat(
        Admission(gates, store.give_up if store else 5.0),
        ticket,
        resumes,
        conversations,
        cache,
        backend,
        generations,
        responses,
        settings.max_message_chars,
    )
    verifier = TokenVerifier(settings)
    services = Services(
        settings=settings,
        drain=drain,
        page=load_page(settings.oidc_issuer, settings.demo_delay_scale),
        readiness=Readiness(drain, [_Redis(store)] if store else []),
        metrics=SharedCollection(),
        verifier=verifier,
        addresses=addresses,
        chat=chat,
        conversations=conversations,
        budgets=budgets,
        generations=generations,
        cache=cache,
        slots=slots,
    )
    services.closing = [generations, responses, slots, budgets, cache, backend, verifier]
    if store is not None:
        services.closing.append(store)
    return services
