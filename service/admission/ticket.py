"""The response cache's gate: a request's cache ticket, looked up in the same round trip as
the limits, and settled when its generation ends (cache/ has the stores and the sources).

It refuses nothing. A conversation's history makes a reply particular to it: those never
touch the cache (`OFF`); `Cache-Control: no-cache` skips the look-up but stores a reply
that ends by itself (`BYPASS`); every other request looks up (`MISS` or `HIT`), and the
first of identical ones that miss together leads them (single flight).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..cache import CacheTicket, ResponseCache, cache_key
from ..errors import TooManyRequests
from ..observability import metrics
from .gate import Asking, Ending, HeaderList, Plain


class TicketGate(Plain):
    def __init__(self, cache: ResponseCache, backend: str, model: str, per_user: bool) -> None:
        self.cache = cache
        self.backend = backend
        self.model = model
        self.per_user = per_user  # CHAT_CACHE_SCOPE=user

    def _ticket(self, asking: Asking) -> CacheTicket:
        if not self.cache.enabled or asking.conversation_id is not None:
            return CacheTicket(None, "OFF")
        scope = asking.user if self.per_user else None
        key = cache_key(self.backend, asking.model or self.model, asking.subject, scope)
        return CacheTicket(key, "BYPASS" if asking.no_cache else "MISS")

    async def take(self, asking: Asking) -> CacheTicket:
        ticket = self._ticket(asking)
        if ticket.key is None:
            return ticket
        if not ticket.single_flight:
            return ticket  # BYPASS: it stores what it makes, and leads nobody
        ticket.events, ticket.leading = await self.cache.lookup(ticket.key)
        if ticket.events is not None:
            ticket.mode = "HIT"
            asking.replayed = True
        metrics.cache_requests.labels("hit" if ticket.events is not None else "miss").inc()
        return ticket

    def refusal(self, held: CacheTicket, asking: Asking) -> TooManyRequests | None:
        return None

    def headers(self, held: CacheTicket, asking: Asking) -> HeaderList:
        return [("X-Cache", "HIT" if held.mode == "HIT" else "MISS")]

    def give_back(
        self, held: CacheTicket, asking: Asking, ending: Ending
    ) -> asyncio.Future[Any] | None:
        """Store a reply that ended by itself and was made here (not replayed), and, for a
        leader, release its lock either way."""
        if held.key is None:
            return None
        blob = None if held.replayed else ending.blob
        leading = held.leading and held.single_flight
        if blob is None and not leading:
            return None
        return self.cache.finish(held.key, blob, leading)
