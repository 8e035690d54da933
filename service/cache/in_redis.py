"""The response cache in Redis, shared by every worker and pod, each entry for
CHAT_CACHE_TTL.

The leader of identical requests holds a lock, `<entry>:lock` (`SET NX`), whose value is its
holder's token, `<worker id>:<n>`; the holder deletes it only while it still holds that
token, so a holder that outlived its lock never deletes another's. Each worker that holds
locks keeps one heartbeat key alive (HEARTBEAT_SECONDS, renewed every third of that): a
waiter that finds the holder's heartbeat gone takes the lock for dead, deletes exactly that
lock and generates itself, so a SIGKILLed holder frees its waiters within seconds. One
heartbeat per worker rather than a renewal per lock: a worker holding 5,000 locks sends one
command every two seconds, not 2,500 a second.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from typing import Any

from ..events import Event
from ..redis import keys
from ..redis.store import Script, Store
from . import ResponseCache, replay_of

# A lock's own life: only a backstop, for a holder whose heartbeat outlives it.
LOCK_SECONDS = 120
# A holder's heartbeat lives this long, renewed every third of it.
HEARTBEAT_SECONDS = 6
WAIT_POLL_SECONDS = (0.05, 0.1, 0.2, 0.4)

# KEYS = entry, lock; ARGV = lock seconds, the caller's token. One round trip for a look-up
# that either finds the entry or, on a miss, tries to become the request that generates it.
LOOKUP = Script("""
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[1]) then return {0, 1} end
return {0, 0}
""")
# KEYS = lock; ARGV = token. Deletes the lock only for its holder.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


class RedisCache(ResponseCache):
    def __init__(self, ttl: int, store: Store) -> None:
        super().__init__(ttl)
        self.store = store
        self._locks: dict[str, str] = {}  # key -> token, for the Redis locks held here
        self._holder = secrets.token_hex(8)
        self._tokens = itertools.count()
        self._heartbeat: asyncio.Task[None] | None = None

    async def _find(self, key: str) -> tuple[list[Event] | None, bool]:
        token = f"{self._holder}:{next(self._tokens)}"
        self._beat()  # before the lock: no waiter may find a lock without its heartbeat
        found: Any = await self.store.run_script(
            "cache_get", LOOKUP, [key, keys.cache_lock(key)], [LOCK_SECONDS, token], fallback=None
        )
        if found is None:  # Redis is away: generate here, uncoordinated
            return None, True
        if found[0] == 1:
            return replay_of(found[1]), False
        if not found[1]:
            return None, False  # another request holds the lock
        self._locks[key] = token
        return None, True

    async def get(self, key: str) -> list[Event] | None:
        blob: Any = await self.store.execute("cache_get", "GET", key, fallback=None)
        return replay_of(blob) if isinstance(blob, bytes) else None

    def _store(self, key: str, blob: bytes | None, leading: bool) -> asyncio.Future[Any] | None:
        commands: list[tuple[Any, ...]] = []
        if blob is not None:
            commands.append(("SET", key, blob, "EX", self.ttl))
        token = self._locks.pop(key, None) if leading else None
        if token is not None:
            commands.append(("EVAL", RELEASE.source, 1, keys.cache_lock(key), token))
        return self.store.send("cache_put", *commands) if commands else None

    def _beat(self) -> None:
        """Keep this worker's heartbeat alive from its first lock on. The first beat goes
        in the same batch as, and before, the look-up that may take a lock."""
        if self._heartbeat is None or self._heartbeat.done():
            self.store.send("cache_lock", self._heartbeat_command(), urgent=True)
            self._heartbeat = asyncio.ensure_future(self._keep_beating())

    def _heartbeat_command(self) -> tuple[Any, ...]:
        return ("SET", keys.cache_holder(self._holder), 1, "EX", HEARTBEAT_SECONDS)

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS / 3)
            self.store.send("cache_lock", self._heartbeat_command(), urgent=True)

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    async def _remote_wait(self, key: str, patience: float) -> list[Event] | None:
        """The leader is elsewhere: poll for its entry while its lock stands and its
        holder's heartbeat goes on."""
        deadline = time.monotonic() + patience
        attempt = 0
        while time.monotonic() < deadline:
            found = await self.get(key)
            if found is not None:
                return found
            lock = keys.cache_lock(key)
            token: Any = await self.store.execute("cache_lock", "GET", lock, fallback=None)
            if token is None:
                return await self.get(key)
            holder = token.split(b":")[0].decode(errors="replace")
            alive = await self.store.execute(
                "cache_lock", "EXISTS", keys.cache_holder(holder), fallback=1
            )
            if not alive:  # its holder died: take exactly that lock down, and generate
                release = ("EVAL", RELEASE.source, 1, lock, token)
                await self.store.execute("cache_lock", *release, fallback=None)
                return None
            await asyncio.sleep(WAIT_POLL_SECONDS[min(attempt, len(WAIT_POLL_SECONDS) - 1)])
            attempt += 1
        return None
