"""The open-stream gate: at most CHAT_MAX_STREAMS_PER_USER streams per user at once, across
workers and pods when Redis is set.

Each stream holds a lease in a Redis sorted set per user (member = slot id, score = lease
expiry). A worker renews its leases in one batch every third of the lease time; a worker
killed with SIGKILL stops renewing, so its slots free themselves within one lease
(CHAT_STREAM_LEASE_SECONDS) instead of locking the user out. Expiries are reckoned on
Redis's clock (`TIME` inside the scripts), never a pod's: a pod whose clock is behind would
write leases already expired, and one ahead would evict the others' live ones. Without
Redis, a count per user in this worker. Redis failures fail open, through `Store.call`.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from typing import Any, Protocol

from ..errors import TooManyRequests
from ..observability import metrics
from ..redis import keys
from ..redis.store import Script, Store
from .gate import Asking, Ending, Plain

# A slot frees when one of the user's streams ends; there is no better moment to name.
RETRY_AFTER = 5

# KEYS[1] = the user's lease set; ARGV = lease milliseconds, max streams, slot id.
# Drops expired leases, then adds this one if there is room. Returns 1 or 0.
ACQUIRE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""")
# KEYS[1] = a user's lease set; ARGV = lease milliseconds, then the slot ids this worker
# still holds there. Extends those that are still present (XX: never resurrects one).
RENEW = Script("""
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""")


class StreamSlots(Protocol):
    """At most `limit` open streams per user: `acquire` returns a slot id or None;
    `release` hands one back (with Redis, the future of the command doing it)."""

    async def acquire(self, user: str) -> str | None: ...

    def release(self, slot: str, urgent: bool = False) -> asyncio.Future[Any] | None: ...

    async def aclose(self) -> None: ...


class MemorySlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()
        self._held: dict[str, str] = {}  # slot id -> user

    async def acquire(self, user: str) -> str | None:
        if self._open[user] >= self.limit:
            return None
        self._open[user] += 1
        slot = uuid.uuid4().hex
        self._held[slot] = user
        return slot

    def release(self, slot: str, urgent: bool = False) -> asyncio.Future[Any] | None:
        user = self._held.pop(slot, None)
        if user is not None:
            self._open[user] -= 1
            if self._open[user] <= 0:
                del self._open[user]
        return None

    async def aclose(self) -> None:
        return None


class RedisSlots:
    """Leases in a sorted set per user, renewed by this worker while it holds them."""

    def __init__(self, limit: int, store: Store, lease_seconds: float) -> None:
        self.limit = limit
        self.store = store
        self.lease_seconds = lease_seconds
        self._lease_ms = math.ceil(lease_seconds * 1000)
        self._held: dict[str, str] = {}  # slot id -> user, for renewal and release
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, user: str) -> str | None:
        slot = uuid.uuid4().hex
        args = (self._lease_ms, self.limit, slot)
        acquired = await self.store.run_script(
            "stream_slot", ACQUIRE, [keys.stream_slots(user)], args, fallback=1
        )
        if not acquired:
            return None
        self._held[slot] = user
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_leases())
        return slot

    def release(self, slot: str, urgent: bool = False) -> asyncio.Future[Any] | None:
        """Nobody needs to wait for this, so the ZREM goes in a later batch
        (redis/pipeline.py), unless `urgent`; the future says when it is done."""
        user = self._held.pop(slot, None)
        if user is None:
            return None
        command = ("ZREM", keys.stream_slots(user), slot)
        return self.store.send("stream_slot", command, urgent=urgent)

    async def _renew_leases(self) -> None:
        store = self.store
        while self._held:
            await asyncio.sleep(self.lease_seconds / 3)
            by_user: dict[str, list[str]] = {}
            for slot, user in self._held.items():
                by_user.setdefault(user, []).append(slot)

            async def renew(by_user: dict[str, list[str]] = by_user) -> None:
                await asyncio.gather(
                    *(
                        store.eval(RENEW, [keys.stream_slots(user)], [self._lease_ms, *slots])
                        for user, slots in by_user.items()
                    )
                )

            await store.call("stream_slot", renew, None)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()


def make_slots(limit: int, store: Store | None, lease_seconds: float) -> StreamSlots:
    return MemorySlots(limit) if store is None else RedisSlots(limit, store, lease_seconds)


class SlotGate(Plain):
    def __init__(self, slots: StreamSlots) -> None:
        self.slots = slots

    async def take(self, asking: Asking) -> str | None:
        return await self.slots.acquire(asking.user)

    def refusal(self, held: str | None, asking: Asking) -> TooManyRequests | None:
        if held is not None:
            return None
        metrics.rate_limited.labels("streams").inc()
        return TooManyRequests("too many open streams", RETRY_AFTER)

    def give_back(
        self, held: str | None, asking: Asking, ending: Ending
    ) -> asyncio.Future[Any] | None:
        return None if held is None else self.slots.release(held, urgent=asking.urgent)
