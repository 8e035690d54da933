"""Admission: whether a chat request may stream, and what letting it in took.

A request is admitted by the user's rate check, an open-stream slot, a reservation against
the user's token budget (when there is one; budgets.py) and the response cache's look-up.
With Redis the four go in one round trip (pipelining.py): a request over its rate has taken
a slot, tokens and maybe a single-flight lock by the time it knows, and hands them back
before it answers. What an admitted request holds (its slot, its reservation, its cache
ticket) is handed back along one path, `release`, once, whatever happens after; the
reservation is settled to what the generation used (`account`) before that.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .budgets import Reservation
from .cache import cache_key
from .errors import TooManyRequests
from .events import Event
from .limits import RateResult, rate_key
from .observability import metrics
from .state import Services, Timing
from .tokens import NOTHING, Usage, estimate_prompt

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
    __slots__ = ("_cache_settled", "rate", "reservation", "services", "slot", "ticket")

    def __init__(
        self,
        services: Services,
        rate: RateResult,
        slot: str | None,
        ticket: CacheTicket,
        reservation: Reservation | None = None,
    ) -> None:
        self.services = services
        self.rate = rate
        self.slot = slot
        self.ticket = ticket
        self.reservation = reservation
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
        """The rate check, a stream slot, the token reservation and the cache look-up;
        TooManyRequests (429) when the rate, the open streams or the token budget are over
        their limit, with nothing left held."""
        ticket = _ticket(services, user, message, conversation_id, no_cache)
        started = time.perf_counter()
        limits, slots, cache = services.rate_limits, services.slots, services.cache
        budgets = services.budgets

        async def reserve() -> Reservation | None:
            if not budgets.enabled:
                return None
            return await budgets.reserve(user, estimate_prompt((message,)))

        async def lookup() -> tuple[list[Event] | None, bool]:
            if ticket.key is None or not ticket.single_flight:
                return None, ticket.key is not None
            return await cache.lookup(ticket.key)

        window = rate_key(user)
        slot: str | None = None
        reservation: Reservation | None = None
        found: tuple[list[Event] | None, bool] = (None, False)
        known = limits.known_refusal(window)
        if known is not None:
            rate = known
        elif services.store is None:  # in memory each step is instant: nothing to undo
            rate = await limits.hit(window)
            if rate.allowed:
                slot = await slots.acquire(user)
            if slot is not None:
                reservation = await reserve()
                found = await lookup()
        else:
            rate, slot, found, reservation = await asyncio.gather(
                limits.hit(window), slots.acquire(user), lookup(), reserve()
            )
        timing.limits = timing.cache = (time.perf_counter() - started) * 1000  # one wait
        ticket.events, ticket.leading = found
        if reservation is not None and not reservation.fits and ticket.events is not None:
            reservation.fits = True  # a cached reply costs no tokens: it holds none
        admission = cls(services, rate, slot, ticket, reservation)
        fits = reservation is None or reservation.fits
        if rate.allowed and slot is not None and fits:
            if ticket.single_flight:
                ticket.mode = "HIT" if ticket.events is not None else "MISS"
                metrics.cache_requests.labels("hit" if ticket.events is not None else "miss").inc()
            return admission
        await admission._refuse()
        raise AssertionError("unreachable")

    async def _refuse(self) -> None:
        # All go in this batch, so all are gone when the client hears it is refused.
        self.settle_cache(None)
        handed_back = []
        if self.slot is not None:
            handed_back.append(self.services.slots.release(self.slot, urgent=True))
            self.slot = None
        reservation = self.reservation
        if reservation is not None and reservation.fits:
            handed_back.append(self.services.budgets.settle(reservation, NOTHING))
        store = self.services.store
        pending = [future for future in handed_back if future is not None]
        if pending and store is not None:
            await asyncio.wait(pending, timeout=store.give_up)
        rate = self.rate
        if not rate.allowed:
            metrics.rate_limited.labels("rate").inc()
            raise TooManyRequests("rate limit reached", rate.reset_seconds, self._limits())
        if reservation is None or reservation.fits:
            metrics.rate_limited.labels("streams").inc()
            raise TooManyRequests("too many open streams", STREAMS_RETRY_AFTER, self._limits())
        self._over_budget()

    def _over_budget(self) -> None:
        reservation = self.reservation
        assert reservation is not None
        metrics.rate_limited.labels("tokens").inc()
        budgets = self.services.budgets
        left = min(budgets.limit, reservation.standing.remaining + reservation.tokens)
        raise TooManyRequests(
            f"token budget reached: {left} of {budgets.limit} tokens left, "
            f"this request needs up to {reservation.tokens + reservation.wanted}",
            budgets.retry_after(reservation),
            self._limits(),
        )

    async def reserve_more(self, tokens: int) -> None:
        """Reserve `tokens` more (a conversation's history, read after admission); 429
        when they do not fit, what was reserved before staying held until `release`."""
        reservation = self.reservation
        if reservation is None or tokens <= 0:
            return
        await self.services.budgets.top_up(reservation, tokens)
        if not reservation.fits:
            self._over_budget()

    def _limits(self) -> dict[str, str]:
        headers = self.rate.headers()
        if self.reservation is not None:
            self.services.budgets.add_headers(headers, self.reservation.standing)
        return headers

    def headers(self) -> dict[str, str]:
        return {**self._limits(), "X-Cache": "HIT" if self.ticket.mode == "HIT" else "MISS"}

    def account(self, usage: Usage) -> None:
        """What the generation used: counted, and its reservation settled to it. Once."""
        reservation = self.reservation
        self.reservation = None
        self.services.budgets.settle(reservation, usage)

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
        """Hand back whatever is still held: the slot, an unsettled cache ticket, and a
        reservation nothing was generated for."""
        self.settle_cache(None)
        if self.reservation is not None:
            self.services.budgets.settle(self.reservation, NOTHING, count=False)
            self.reservation = None
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
