"""Response cache: a completed stream's events, replayed at once for an identical request.

The key is a hash of backend, model and message, so a changed model never serves another
model's reply. Only streams that ended with `done` are stored (never an error, a disconnect
or a shutdown), and only up to `MAX_ENTRY_BYTES`. Entries live in Redis with
CHAT_CACHE_TTL when it is configured, else in a small per-worker LRU.

Identical requests that miss at the same time generate once: the first takes a short lock
(`SET NX` in Redis, a future in memory) and generates; the others wait, pinged like any idle
stream, and then replay the stored events. If the first fails, a waiter generates itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .sse import Event
from .store import Store

MAX_ENTRY_BYTES = 256 * 1024
MEMORY_ENTRIES = 256
LOCK_SECONDS = 120
WAIT_POLL_SECONDS = (0.05, 0.1, 0.2, 0.4)


def cache_key(backend: str, model: str, message: str) -> str:
    digest = hashlib.sha256(f"{backend}\0{model}\0{message}".encode()).hexdigest()
    return f"chat:cache:{digest}"


def dumps(events: Sequence[Event]) -> bytes | None:
    blob = json.dumps([[e.name, e.data] for e in events], ensure_ascii=False).encode()
    return blob if len(blob) <= MAX_ENTRY_BYTES else None


def loads(blob: bytes) -> list[Event]:
    return [Event(name, data) for name, data in json.loads(blob)]


class ResponseCache:
    def __init__(self, ttl: int, store: Store | None) -> None:
        self.ttl = ttl
        self.store = store
        self._memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._flights: dict[str, asyncio.Future[None]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    async def get(self, key: str) -> list[Event] | None:
        blob = await self._read(key)
        if blob is None:
            return None
        try:
            return loads(blob)
        except (ValueError, TypeError):
            return None  # a corrupt entry is a miss, not a failed request

    async def put(self, key: str, events: Sequence[Event]) -> None:
        blob = dumps(events)
        if blob is None:
            return
        if self.store is None:
            self._memory[key] = (time.monotonic() + self.ttl, blob)
            self._memory.move_to_end(key)
            while len(self._memory) > MEMORY_ENTRIES:
                self._memory.popitem(last=False)
            return
        redis = self.store.redis
        await self.store.call("cache_put", lambda: redis.set(key, blob, ex=self.ttl), None)

    async def _read(self, key: str) -> bytes | None:
        if self.store is None:
            entry = self._memory.get(key)
            if entry is None or entry[0] < time.monotonic():
                return None
            return entry[1]
        redis = self.store.redis
        blob: Any = await self.store.call("cache_get", lambda: redis.get(key), None)
        return blob if isinstance(blob, bytes) else None

    async def lead(self, key: str) -> bool:
        """Try to become the one request generating `key`; False if another already is."""
        if key in self._flights:
            return False
        if self.store is not None:
            redis = self.store.redis
            acquired: Any = await self.store.call(
                "cache_lock",
                lambda: redis.set(f"{key}:lock", b"1", nx=True, ex=LOCK_SECONDS),
                True,
            )
            if not acquired:
                return False
        self._flights[key] = asyncio.get_running_loop().create_future()
        return True

    async def land(self, key: str) -> None:
        """The leader is finished (stored or not): wake the waiters, drop the lock."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(None)
        if self.store is not None:
            redis = self.store.redis
            await self.store.call("cache_lock", lambda: redis.delete(f"{key}:lock"), 0)

    async def wait(self, key: str, patience: float = LOCK_SECONDS) -> list[Event] | None:
        """Wait for the leader of `key`, then return its stored events, or None if it failed."""
        flight = self._flights.get(key)
        if flight is not None:  # the leader is in this worker: wait for it, no polling
            try:
                await asyncio.wait_for(asyncio.shield(flight), patience)
            except TimeoutError:
                return None
            return await self.get(key)
        if self.store is None:
            return None
        # The leader is elsewhere: poll for its entry while its lock stands.
        redis = self.store.redis
        deadline = time.monotonic() + patience
        attempt = 0
        while time.monotonic() < deadline:
            events = await self.get(key)
            if events is not None:
                return events
            locked = await self.store.call("cache_lock", lambda: redis.exists(f"{key}:lock"), 0)
            if not locked:
                return await self.get(key)
            await asyncio.sleep(WAIT_POLL_SECONDS[min(attempt, len(WAIT_POLL_SECONDS) - 1)])
            attempt += 1
        return None
