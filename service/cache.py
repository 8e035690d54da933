"""Response cache: a completed stream's events, replayed at once for an identical request.

The key is a hash of backend, model and message (and the user, with CHAT_CACHE_SCOPE=user),
so a changed model never serves another model's reply. Only replies that ended by
themselves are stored (never an error, a disconnect, a shutdown, or a reply cut short by
`length` or `content_filter`), and only up to `MAX_ENTRY_BYTES`. Entries live in Redis with
CHAT_CACHE_TTL when it is configured, else in a small per-worker LRU.

Identical requests that miss at the same time generate once: the first takes a short lock
(`SET NX` in Redis, a future in memory) and generates; the others wait, pinged like any idle
stream, and then replay the stored events. If the first fails, a waiter generates itself.

The Redis lock holds a random token of its holder and lives LOCK_SECONDS; the holder renews
it while it generates and deletes it only if it still holds that token, so a holder that
outlived its lock never deletes another's, and one that died (SIGKILL) frees the waiters
within LOCK_SECONDS rather than leaving them to wait out a long lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from .sse import Event
from .store import Script, Store

MAX_ENTRY_BYTES = 256 * 1024
MEMORY_ENTRIES = 256
# A live holder renews its lock every third of this; a dead one's lapses within it.
LOCK_SECONDS = 6
# The longest a waiter waits for a leader that keeps its lock (a very long generation).
PATIENCE_SECONDS = 120
WAIT_POLL_SECONDS = (0.05, 0.1, 0.2, 0.4)


def cache_key(backend: str, model: str, message: str, user: str | None = None) -> str:
    """With CHAT_CACHE_SCOPE=user, `user` keeps each user's replies their own."""
    scope = "" if user is None else f"\0{user}"
    digest = hashlib.sha256(f"{backend}\0{model}\0{message}{scope}".encode()).hexdigest()
    return f"chat:cache:{digest}"


def dumps(events: Sequence[Event]) -> bytes | None:
    try:
        blob = orjson.dumps([(e.name, e.data) for e in events])
    except TypeError:  # a lone surrogate in the text: not worth caching
        return None
    return blob if len(blob) <= MAX_ENTRY_BYTES else None


def loads(blob: bytes) -> list[Event]:
    return [Event(name, data) for name, data in orjson.loads(blob)]


# KEYS = entry, lock; ARGV = lock seconds, the caller's token. One round trip for a look-up
# that either finds the entry or, on a miss, tries to become the request that generates it.
LOOKUP = Script("""
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[1]) then return {0, 1} end
return {0, 0}
""")
# KEYS = lock; ARGV = lock seconds, token. Extends the lock if the token still holds it.
RENEW = Script("""
if redis.call('GET', KEYS[1]) == ARGV[2] then return redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 0
""")
# KEYS = lock; ARGV = token. Deletes the lock only for its holder.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


class ResponseCache:
    def __init__(self, ttl: int, store: Store | None) -> None:
        self.ttl = ttl
        self.store = store
        self._memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._flights: dict[str, asyncio.Future[None]] = {}
        self._locks: dict[str, str] = {}  # key -> token, for the Redis locks held here
        self._renewer: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    async def lookup(self, key: str) -> tuple[list[Event] | None, bool]:
        """The stored events, or None and whether this request should generate them
        (False: an identical request is generating already; `wait` for it)."""
        if key in self._flights:
            return await self.get(key), False
        if self.store is None:
            events = await self.get(key)
        else:
            token = secrets.token_hex(16)
            found: Any = await self.store.run_script(
                "cache_get", LOOKUP, [key, f"{key}:lock"], [LOCK_SECONDS, token], fallback=None
            )
            if found is None:  # Redis is away: generate here, uncoordinated
                events = None
            elif found[0] == 1:
                events = _loads(found[1])
            else:
                events = None
                if not found[1]:
                    return None, False
                self._hold(key, token)
        if events is not None:
            return events, False
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None, True

    async def get(self, key: str) -> list[Event] | None:
        if self.store is None:
            entry = self._memory.get(key)
            if entry is None or entry[0] < time.monotonic():
                return None
            return _loads(entry[1])
        blob: Any = await self.store.execute("cache_get", "GET", key, fallback=None)
        return _loads(blob) if isinstance(blob, bytes) else None

    def finish(self, key: str, events: Sequence[Event] | None, leading: bool) -> None:
        """Store a completed stream (`events`, or None for one that failed) and, for the
        leader, release the lock and then wake the waiters. Nobody waits for the write: it
        goes with whatever else the stream's end sends (its slot release)."""
        blob = dumps(events) if events is not None else None
        written = None
        if self.store is None:
            if blob is not None:
                self._memory[key] = (time.monotonic() + self.ttl, blob)
                self._memory.move_to_end(key)
                while len(self._memory) > MEMORY_ENTRIES:
                    self._memory.popitem(last=False)
        elif blob is not None or leading:
            commands: list[tuple[Any, ...]] = []
            if blob is not None:
                commands.append(("SET", key, blob, "EX", self.ttl))
            token = self._locks.pop(key, None) if leading else None
            if token is not None:
                commands.append(("EVAL", RELEASE.source, 1, f"{key}:lock", token))
            written = self.store.send("cache_put", *commands) if commands else None
        if not leading:
            return
        if written is None:
            self._land(key)
        else:
            written.add_done_callback(lambda _: self._land(key))

    def _land(self, key: str) -> None:
        """The leader's entry is written (or failed): wake this worker's waiters."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(None)

    def _hold(self, key: str, token: str) -> None:
        self._locks[key] = token
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_locks())

    async def _renew_locks(self) -> None:
        """Every third of LOCK_SECONDS, extend the locks this worker still holds (one
        round trip for all of them: the calls of one loop turn go in one batch)."""
        store = self.store
        assert store is not None
        while self._locks:
            await asyncio.sleep(LOCK_SECONDS / 3)
            await asyncio.gather(
                *(
                    store.run_script("cache_lock", RENEW, [f"{key}:lock"], [LOCK_SECONDS, token], 0)
                    for key, token in list(self._locks.items())
                )
            )

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()

    async def wait(self, key: str, patience: float = PATIENCE_SECONDS) -> list[Event] | None:
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
        deadline = time.monotonic() + patience
        attempt = 0
        while time.monotonic() < deadline:
            events = await self.get(key)
            if events is not None:
                return events
            locked = await self.store.execute("cache_lock", "EXISTS", f"{key}:lock", fallback=0)
            if not locked:
                return await self.get(key)
            await asyncio.sleep(WAIT_POLL_SECONDS[min(attempt, len(WAIT_POLL_SECONDS) - 1)])
            attempt += 1
        return None


def _loads(blob: bytes) -> list[Event] | None:
    try:
        return loads(blob)
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return None  # a corrupt entry is a miss, not a failed request
