"""Admission: whether a chat request may stream, and what letting it in took.

A request is admitted by the user's rate check, an open-stream slot and the response
cache's look-up. With Redis the three go in one round trip (pipelining.py): a request over
its rate has taken a slot and maybe a single-flight lock by the time it knows, and hands
them back before it answers. What an admitted request holds (its slot, its cache ticket)
is handed back along one path, `release`, once, whatever happens after.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .cache import cache_key
from .errors import TooManyRequests
from .events import Event
from .limits import RateResult
from .observability import metrics
from .state import Services, Timing

# A slot frees when one of the user's streams ends; there is no better moment to name.
STREAMS_RETRY_AFTER = 5


@dataclass(slots=True)
class CacheTicket:
    """The cache's part in one request: its key (None: the cache is off for it), what
    `X-Cache` says, the stored events of a hit, and whether this request leads the
    identical ones that wait for it."""

    key: str | None
    mode: str  # OFF | BYPASS | MISS | HIT
    events: list[Event] | None = None
    leading: bool = False

    @property
    def single_flight(self) -> bool:
        return self.mode == "MISS"


class Admission:
    __slots__ = ("_cache_settled", "rate", "services", "slot", "ticket")

    def __init__(
        self, services: Services, rate: RateResult, slot: str | None, ticket: CacheTicket
    ) -> None:
        self.services = services
        self.rate = rate
        self.slot = slot
        self.ticket = ticket
        self._cache_settled = False

    @classmethod
    async def admit(
        cls,
        services: Services,
        user: str,
        message: str,
        *,
        conversation_id: str | None,
        no_cache: bool,
        timing: Timing,
    ) -> Admission:
        """The rate check, a stream slot and the cache look-up; TooManyRequests (429) when
        the rate or the open streams are over their limit, with nothing left held."""
        ticket = _ticket(services, user, message, conversation_id, no_cache)
        started = time.perf_counter()
        limits, slots, cache = services.rate_limits, services.slots, services.cache

        async def lookup() -> tuple[list[Event] | None, bool]:
            if ticket.key is None or not ticket.single_flight:
                return None, ticket.key is not None
            return await cache.lookup(ticket.key)

        rate_key = f"user:{user}"
        slot: str | None = None
        found: tuple[list[Event] | None, bool] = (None, False)
        known = limits.known_refusal(rate_key)
        if known is not None:
            rate = known
        elif services.store is None:  # in memory each step is instant: nothing to undo
            rate = await limits.hit(rate_key)
            if rate.allowed:
                slot = await slots.acquire(user)
                found = await lookup() if slot is not None else (None, False)
        else:
            rate, slot, found = await asyncio.gather(
                limits.hit(rate_key), slots.acquire(user), lookup()
            )
        timing.limits = timing.cache = (time.perf_counter() - started) * 1000  # one wait
        ticket.events, ticket.leading = found
        admission = cls(services, rate, slot, ticket)
        if rate.allowed and slot is not None:
            if ticket.single_flight:
                ticket.mode = "HIT" if ticket.events is not None else "MISS"
                metrics.cache_requests.labels("hit" if ticket.events is not None else "miss").inc()
            return admission
        await admission._refuse()
        raise AssertionError("unreachable")

    async def _refuse(self) -> None:
        # Both go in this batch, so both are gone when the client hears it is refused.
        self.settle_cache(None)
        if self.slot is not None:
            released = self.services.slots.release(self.slot, urgent=True)
            self.slot = None
            store = self.services.store
            if released is not None and store is not None:
                await asyncio.wait([released], timeout=store.give_up)
        rate = self.rate
        if not rate.allowed:
            metrics.rate_limited.labels("rate").inc()
            raise TooManyRequests("rate limit reached", rate.reset_seconds, rate.headers())
        metrics.rate_limited.labels("streams").inc()
        raise TooManyRequests("too many open streams", STREAMS_RETRY_AFTER, rate.headers())

    def headers(self) -> dict[str, str]:
        return {**self.rate.headers(), "X-Cache": "HIT" if self.ticket.mode == "HIT" else "MISS"}

    def settle_cache(self, blob: bytes | None) -> None:
        """Store a reply that ended by itself (its `cache.blob_of`), or none; for a leader,
        release the single-flight lock either way. Once."""
        if self._cache_settled:
            return
        self._cache_settled = True
        ticket = self.ticket
        leading = ticket.leading and ticket.single_flight
        if ticket.key is not None and (blob is not None or leading):
            self.services.cache.finish(ticket.key, blob, leading)

    def release(self) -> None:
        """Hand back whatever is still held: the slot, and an unsettled cache ticket."""
        self.settle_cache(None)
        if self.slot is not None:
            self.services.slots.release(self.slot)
            self.slot = None


def _ticket(
    services: Services, user: str, message: str, conversation_id: str | None, no_cache: bool
) -> CacheTicket:
    """History makes a reply particular to its conversation: those never touch the cache."""
    cache, backend = services.cache, services.backend
    if not cache.enabled or conversation_id is not None:
        return CacheTicket(None, "OFF")
    scope = user if services.settings.cache_scope == "user" else None
    key = cache_key(backend.name, backend.model, message, scope)
    return CacheTicket(key, "BYPASS" if no_cache else "MISS")
