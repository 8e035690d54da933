"""Rate gates: a fixed window of requests per key, counted in Redis when it is configured
(shared by every worker and pod), in this worker's memory otherwise.

The `limits` library's fixed window, through its asyncio API, so no check blocks the event
loop (slowapi is not used: it checks Redis synchronously and its middleware buffers
streams). Redis failures fail open (the request goes ahead), through `Store.call`.

Three gates are rates: the user's chat rate (CHAT_RATE_LIMIT, `"requests"`), the user's
resumes (CHAT_RESUME_RATE_LIMIT, `"resumes"`) and a client address's failed
authentications and unauthenticated streams (CHAT_IP_RATE_LIMIT, `"address"`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from limits import parse
from limits.aio.storage import MemoryStorage, RedisStorage

from ..errors import TooManyRequests
from ..observability import metrics
from ..redis.store import Script, Store
from .gate import Asking, HeaderList, Plain

WINDOW_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class RateResult:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    window: int  # seconds

    def headers(self, policy: str, legacy: bool = True) -> HeaderList:
        """The IETF fields (draft-ietf-httpapi-ratelimit-headers) for this policy, and
        `X-RateLimit-*` for the one policy that has them (the user's requests)."""
        pairs = [
            ("RateLimit-Policy", f'"{policy}";q={self.limit};w={self.window}'),
            ("RateLimit", f'"{policy}";r={self.remaining};t={self.reset_seconds}'),
        ]
        if legacy:
            pairs[:0] = [
                ("X-RateLimit-Limit", str(self.limit)),
                ("X-RateLimit-Remaining", str(self.remaining)),
                ("X-RateLimit-Reset", str(self.reset_seconds)),
            ]
        return pairs


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


class BatchedRedisStorage(RedisStorage):
    """limits' own Redis storage (its keys, its increment script, its other calls), with
    the two a fixed window makes on every request, the increment and the expiry, sent in
    the Store's batches (redis/pipeline.py) instead of a round trip of their own each."""

    def __init__(self, store: Store) -> None:
        super().__init__(
            "async+redis://",
            implementation="redispy",
            key_prefix="chat:rate",
            connection_pool=store.pool,
        )
        self.store = store
        self._incr_expire = Script(self.bridge.SCRIPT_INCR_EXPIRE)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        keys = [self.bridge.prefixed_key(key)]
        return int(await self.store.eval(self._incr_expire, keys, [expiry, amount]))

    async def get_expiry(self, key: str) -> float:
        ttl = await self.store.pipeline.execute("TTL", self.bridge.prefixed_key(key))
        return max(int(ttl), 0) + time.time()


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
        """Where `key` stands, spending nothing."""
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

    async def spend(self, key: str) -> RateResult:
        """`hit`, unless the answer is already known."""
        return self.known_refusal(key) or await self.hit(key)


def make_windows(store: Store | None) -> Windows:
    return MemoryWindows() if store is None else RedisWindows(store)


class RateGate(Plain):
    """A rate as a gate of admission: `key` names the window of the one asking."""

    def __init__(
        self,
        limits: RateLimits,
        key: Callable[[str], str],
        policy: str,
        label: str,
        detail: str,
        legacy_headers: bool = True,
    ) -> None:
        self.limits = limits
        self.key = key
        self.policy = policy
        self.label = label  # in chat_rate_limited_total{limit}
        self.detail = detail
        self.legacy_headers = legacy_headers

    def known_refusal(self, asking: Asking) -> TooManyRequests | None:
        known = self.limits.known_refusal(self.key(asking.user))
        return None if known is None else self._refuse(known)

    async def take(self, asking: Asking) -> RateResult:
        return await self.limits.hit(self.key(asking.user))

    def refusal(self, held: RateResult, asking: Asking) -> TooManyRequests | None:
        return None if held.allowed else self._refuse(held)

    def headers(self, held: RateResult, asking: Asking) -> HeaderList:
        return held.headers(self.policy, self.legacy_headers)

    async def standing(self, asking: Asking) -> HeaderList:
        result = await self.limits.peek(self.key(asking.user))
        return result.headers(self.policy, self.legacy_headers)

    def _refuse(self, result: RateResult) -> TooManyRequests:
        metrics.rate_limited.labels(self.label).inc()
        pairs = dict(result.headers(self.policy, self.legacy_headers))
        return TooManyRequests(self.detail, result.reset_seconds, pairs)

    async def spend(self, subject: str) -> None:
        """Spend one for `subject` outside any admission (a failed authentication): 429
        once the window is spent."""
        result = await self.limits.spend(self.key(subject))
        if not result.allowed:
            raise self._refuse(result)
