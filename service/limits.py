"""Rate limits and open-stream limits, per user, across workers and pods when Redis is set.

Rate: the `limits` library's fixed window through its asyncio API, so no check blocks the
event loop; in Redis with `CHAT_REDIS_URL`, in process memory otherwise. slowapi is not used:
it checks Redis synchronously and its middleware buffers streams.

Open streams: each stream holds a lease in a Redis sorted set per user (member = stream id,
score = lease expiry). A worker renews its leases in one batch every third of the lease
time; a worker killed with SIGKILL stops renewing, so its slots free themselves within one
lease (CHAT_STREAM_LEASE_SECONDS) instead of locking the user out. Expiries are reckoned on
Redis's clock (`TIME` inside the scripts), never a pod's: a pod whose clock is behind would
write leases already expired, and one ahead would evict the others' live ones.

Redis failures fail open (the request goes ahead), through `Store.call`.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from limits import parse
from limits.aio.storage import MemoryStorage, RedisStorage

from .store import Script, Store, user_prefix

if TYPE_CHECKING:
    from .config import Settings

# KEYS[1] = the user's lease set; ARGV = lease milliseconds, max streams, stream id.
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
# KEYS[1] = a user's lease set; ARGV = lease milliseconds, then the stream ids this worker
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


WINDOW_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class RateResult:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    window: int  # seconds

    def headers(self, policy: str = "requests") -> dict[str, str]:
        """`X-RateLimit-*`, and the IETF fields (draft-ietf-httpapi-ratelimit-headers) for
        this policy (`"requests"`: the user's; `"address"`: a client address's); budgets.py
        adds its `"tokens"` one to the same fields."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f'"{policy}";q={self.limit};w={self.window}',
            "RateLimit": f'"{policy}";r={self.remaining};t={self.reset_seconds}',
        }


class Windows(Protocol):
    """Where the fixed windows are counted: `count` spends one and returns the count and
    when the window ends (epoch seconds); `known_end` is when this worker last saw it end.
    `peek` returns the same without spending."""

    async def count(self, key: str, expiry: int, known_end: float) -> tuple[int, float]: ...

    async def peek(self, key: str, expiry: int) -> tuple[int, float]: ...


class MemoryWindows:
    """limits' `MemoryStorage`, in this worker."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()

    async def count(self, key: str, expiry: int, known_end: float) -> tuple[int, float]:
        count = await self.storage.incr(key, expiry)
        return count, await self.storage.get_expiry(key)

    async def peek(self, key: str, expiry: int) -> tuple[int, float]:
        count = await self.storage.get(key)
        return count, await self.storage.get_expiry(key) if count else time.time() + expiry


class RedisWindows:
    """limits' Redis storage, through the Store's batches; a count of 0 means Redis is
    down, and the request goes ahead (fail open)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.storage = BatchedRedisStorage(store)

    async def count(self, key: str, expiry: int, known_end: float) -> tuple[int, float]:
        storage, now = self.storage, time.time()
        if known_end > now:
            # The window is fixed: while it lasts, the increment alone is the whole check.
            count = await self.store.call("rate_limit", lambda: storage.incr(key, expiry), 0)
            # A count of 1 opened a new window (the old key expired or was evicted early).
            return count, now + expiry if count == 1 else known_end
        return await self.store.call(
            "rate_limit",
            lambda: asyncio.gather(storage.incr(key, expiry), storage.get_expiry(key)),
            (0, now + expiry),
        )

    async def peek(self, key: str, expiry: int) -> tuple[int, float]:
        prefixed = self.storage.bridge.prefixed_key(key)

        async def read() -> tuple[int, float]:
            count, ttl = await asyncio.gather(
                self.store.pipeline.execute("GET", prefixed),
                self.store.pipeline.execute("TTL", prefixed),
            )
            left = int(ttl) if int(ttl) > 0 else expiry
            return int(count or 0), time.time() + left

        return await self.store.call("rate_limit", read, (0, time.time() + expiry))


class RateLimits:
    """A fixed window per key (slowapi's default strategy), counted with the storage's
    atomic increment: the count it returns gives `X-RateLimit-Remaining`, and the window's
    expiry, read at the same time, `X-RateLimit-Reset`, so a check is one round trip.
    (A moving window would be exact at window edges, but `limits` answers its hit and its
    stats in two scripts run one after the other: twice the latency on every request.)"""

    def __init__(self, rate: str, windows: Windows) -> None:
        self.item = parse(rate)
        self.windows = windows
        # When each key's current window ends, as last read from the storage.
        self._window_ends: dict[str, float] = {}
        # Keys this worker has seen over the limit, until their window ends: a count only
        # grows within a window, so they are refused without asking Redis, and a flood of
        # refused requests costs Redis nothing.
        self._exhausted: dict[str, float] = {}

    def known_refusal(self, key: str) -> RateResult | None:
        """The answer for a key already over the limit in this window, or None."""
        storage_key = self.item.key_for(key)
        until = self._exhausted.get(storage_key)
        if until is None:
            return None
        left = until - time.time()
        if left <= 0:
            del self._exhausted[storage_key]
            return None
        item = self.item
        return RateResult(False, item.amount, 0, max(1, math.ceil(left)), item.get_expiry())

    async def peek(self, key: str) -> RateResult:
        """Where `key` stands, spending nothing (for a resumed stream's headers)."""
        item = self.item
        count, reset_at = await self.windows.peek(item.key_for(key), item.get_expiry())
        reset = max(0, math.ceil(reset_at - time.time()))
        remaining = max(0, item.amount - count)
        return RateResult(count < item.amount, item.amount, remaining, reset, item.get_expiry())

    async def hit(self, key: str) -> RateResult:
        """Spend one from `key`'s budget."""
        item = self.item
        storage_key = item.key_for(key)
        known_end = self._window_ends.get(storage_key, 0.0)
        count, reset_at = await self.windows.count(storage_key, item.get_expiry(), known_end)
        if count:
            if len(self._window_ends) > WINDOW_CACHE_SIZE:
                self._window_ends.clear()
            self._window_ends[storage_key] = reset_at
        allowed = count <= item.amount
        if not allowed and count:
            if len(self._exhausted) > WINDOW_CACHE_SIZE:
                self._exhausted.clear()
            self._exhausted[storage_key] = reset_at
        reset = max(0 if allowed else 1, math.ceil(reset_at - time.time()))
        remaining = max(0, item.amount - count)
        return RateResult(allowed, item.amount, remaining, reset, item.get_expiry())


class BatchedRedisStorage(RedisStorage):
    """limits' own Redis storage (its keys, its increment script, its other calls), with
    the two a fixed window makes on every request, the increment and the expiry, sent in
    the Store's batches (pipelining.py) instead of a round trip of their own each."""

    def __init__(self, store: Store) -> None:
        super().__init__(
            "async+redis://",
            implementation="redispy",
            key_prefix="chat:rate",
            connection_pool=store.pool,  # type: ignore[arg-type]
        )
        self.store = store
        self._incr_expire = Script(self.bridge.SCRIPT_INCR_EXPIRE)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        keys = [self.bridge.prefixed_key(key)]
        return int(await self.store.eval(self._incr_expire, keys, [expiry, amount]))

    async def get_expiry(self, key: str) -> float:
        ttl = await self.store.pipeline.execute("TTL", self.bridge.prefixed_key(key))
        return max(int(ttl), 0) + time.time()


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

    @staticmethod
    def _key(user: str) -> str:
        return f"{user_prefix(user)}:streams"

    async def acquire(self, user: str) -> str | None:
        slot = uuid.uuid4().hex
        args = (self._lease_ms, self.limit, slot)
        acquired = await self.store.run_script(
            "stream_slot", ACQUIRE, [self._key(user)], args, fallback=1
        )
        if not acquired:
            return None
        self._held[slot] = user
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_leases())
        return slot

    def release(self, slot: str, urgent: bool = False) -> asyncio.Future[Any] | None:
        """Nobody needs to wait for this, so the ZREM goes in a later batch
        (pipelining.py), unless `urgent`; the future says when it is done."""
        user = self._held.pop(slot, None)
        if user is None:
            return None
        return self.store.send("stream_slot", ("ZREM", self._key(user), slot), urgent=urgent)

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
                        store.eval(RENEW, [self._key(user)], [self._lease_ms, *slots])
                        for user, slots in by_user.items()
                    )
                )

            await store.call("stream_slot", renew, None)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()


def rate_key(user: str) -> str:
    """The user's rate window, named with the user's hash tag like every key of theirs."""
    return f"user:{user_prefix(user)}"


def resume_key(user: str) -> str:
    """The user's resume window: a key of its own, whatever the two rates are."""
    return f"resume:{user_prefix(user)}"


def make_limits(
    settings: Settings, store: Store | None
) -> tuple[RateLimits, RateLimits, RateLimits, StreamSlots]:
    """The per-user rate, the per-address rate, the per-user resume rate, and the
    open-stream slots: in Redis when it is configured, in this worker otherwise."""
    windows: Windows = MemoryWindows() if store is None else RedisWindows(store)
    slots: StreamSlots = (
        MemorySlots(settings.max_streams_per_user)
        if store is None
        else RedisSlots(settings.max_streams_per_user, store, settings.stream_lease_seconds)
    )
    return (
        RateLimits(settings.rate_limit, windows),
        RateLimits(settings.ip_rate_limit, windows),
        RateLimits(settings.resume_rate_limit, windows),
        slots,
    )
