"""Response cache: a completed stream's events, replayed at once for an identical request.

The key is a hash of backend, model and message (and the user, with CHAT_CACHE_SCOPE=user),
so a changed model never serves another model's reply. Only replies that ended by
themselves are stored (never an error, a disconnect, a shutdown, or a reply cut short by
`length` or `content_filter`), and only up to `MAX_ENTRY_BYTES`. Entries live in Redis with
CHAT_CACHE_TTL when it is configured, else in a small per-worker LRU.

Identical requests that miss at the same time generate once: the first takes a short lock
(`SET NX` in Redis, a future in memory) and generates; the others wait, pinged like any idle
stream, and then replay the stored events. If the first fails, a waiter generates itself.

The Redis lock holds its holder's token, `<worker id>:<n>`, and the holder deletes it only
while it still holds that token, so a holder that outlived its lock never deletes another's.
Each worker that holds locks keeps one heartbeat key alive (HEARTBEAT_SECONDS, renewed every
third of that): a waiter that finds the holder's heartbeat gone takes the lock for dead,
deletes exactly that lock and generates itself, so a SIGKILLed holder frees its waiters
within seconds. One heartbeat per worker rather than a renewal per lock: a worker holding
5,000 locks sends one command every two seconds, not 2,500 a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson

from .events import Event
from .store import Script, Store

MAX_ENTRY_BYTES = 256 * 1024
MEMORY_ENTRIES = 256
# A lock's own life: only a backstop, for a holder whose heartbeat outlives it.
LOCK_SECONDS = 120
# A holder's heartbeat lives this long, renewed every third of it.
HEARTBEAT_SECONDS = 6
# The longest a waiter waits for a live leader (a very long generation).
PATIENCE_SECONDS = 120
WAIT_POLL_SECONDS = (0.05, 0.1, 0.2, 0.4)


def cache_key(backend: str, model: str, message: str, user: str | None = None) -> str:
    """With CHAT_CACHE_SCOPE=user, `user` keeps each user's replies their own."""
    scope = "" if user is None else f"\0{user}"
    digest = hashlib.sha256(f"{backend}\0{model}\0{message}{scope}".encode()).hexdigest()
    # v2: entries are SSE blocks (see `blob_of`); v1 entries, JSON lists, are never read.
    # The digest is the hash tag: an entry and its single-flight lock (`<key>:lock`), which
    # one script touches together, share a Cluster slot.
    return f"chat:cache:v2:{{{digest}}}"


def blob_of(wires: Iterable[bytes]) -> bytes | None:
    """An entry: the events as the wire has them, less each one's `id:` line (a replay
    gives them ids of its own); None past MAX_ENTRY_BYTES. Slicing the bytes a stream has
    already encoded costs far less than encoding its events again."""
    blob = b"".join([wire[wire.index(b"\n") + 1 :] for wire in wires])
    return blob if len(blob) <= MAX_ENTRY_BYTES else None


def loads(blob: bytes) -> list[Event]:
    events = []
    for block in blob.split(b"\n\n")[:-1]:
        head, _, data = block.partition(b"\ndata: ")
        events.append(Event(head.removeprefix(b"event: ").decode(), orjson.loads(data)))
    return events


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


class ResponseCache:
    """What both stores share: single flight within this worker (a future per key that
    its leader resolves), and waiting for a leader. `lookup`, `get`, `_store` and
    `_remote_wait` are each store's own."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        # Keys this worker leads, with the future its waiters here wait on, made only once
        # one does (most leaders have none: a future each would cost every stream 170 B).
        self._flights: dict[str, asyncio.Future[None] | None] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    async def lookup(self, key: str) -> tuple[list[Event] | None, bool]:
        """The stored events, or None and whether this request should generate them
        (False: an identical request is generating already; `wait` for it)."""
        if key in self._flights:
            return await self.get(key), False
        events, may_lead = await self._find(key)
        if events is not None:
            return events, False
        if not may_lead:
            return None, False
        self._flights[key] = None
        return None, True

    async def _find(self, key: str) -> tuple[list[Event] | None, bool]:
        raise NotImplementedError

    async def get(self, key: str) -> list[Event] | None:
        raise NotImplementedError

    def finish(self, key: str, blob: bytes | None, leading: bool) -> None:
        """Store a completed stream (its `blob_of`, or None for one that failed) and, for
        the leader, release the lock and then wake the waiters. Nobody waits for the write:
        it goes with whatever else the stream's end sends (its slot release)."""
        written = self._store(key, blob, leading)
        if not leading:
            return
        if written is None:
            self._land(key)
        else:
            written.add_done_callback(lambda _: self._land(key))

    def _store(self, key: str, blob: bytes | None, leading: bool) -> asyncio.Future[Any] | None:
        raise NotImplementedError

    def _land(self, key: str) -> None:
        """The leader's entry is written (or failed): wake this worker's waiters."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(None)

    async def wait(self, key: str, patience: float = PATIENCE_SECONDS) -> list[Event] | None:
        """Wait for the leader of `key`, then return its stored events, or None if it failed."""
        if key in self._flights:  # the leader is in this worker: wait for it, no polling
            flight = self._flights[key]
            if flight is None:
                flight = self._flights[key] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(flight), patience)
            except TimeoutError:
                return None
            return await self.get(key)
        return await self._remote_wait(key, patience)

    async def _remote_wait(self, key: str, patience: float) -> list[Event] | None:
        return None

    async def aclose(self) -> None:
        return None


class MemoryCache(ResponseCache):
    """A small LRU in this worker."""

    def __init__(self, ttl: int) -> None:
        super().__init__(ttl)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def _find(self, key: str) -> tuple[list[Event] | None, bool]:
        return await self.get(key), True

    async def get(self, key: str) -> list[Event] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return _loads(entry[1])

    def _store(self, key: str, blob: bytes | None, leading: bool) -> asyncio.Future[Any] | None:
        if blob is not None:
            self._entries[key] = (time.monotonic() + self.ttl, blob)
            self._entries.move_to_end(key)
            while len(self._entries) > MEMORY_ENTRIES:
                self._entries.popitem(last=False)
        return None


class RedisCache(ResponseCache):
    """Entries in Redis with CHAT_CACHE_TTL, shared by every worker and pod; the leader of
    an identical request on another worker holds a lock (see the module docstring)."""

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
            "cache_get", LOOKUP, [key, f"{key}:lock"], [LOCK_SECONDS, token], fallback=None
        )
        if found is None:  # Redis is away: generate here, uncoordinated
            return None, True
        if found[0] == 1:
            return _loads(found[1]), False
        if not found[1]:
            return None, False  # another request holds the lock
        self._locks[key] = token
        return None, True

    async def get(self, key: str) -> list[Event] | None:
        blob: Any = await self.store.execute("cache_get", "GET", key, fallback=None)
        return _loads(blob) if isinstance(blob, bytes) else None

    def _store(self, key: str, blob: bytes | None, leading: bool) -> asyncio.Future[Any] | None:
        commands: list[tuple[Any, ...]] = []
        if blob is not None:
            commands.append(("SET", key, blob, "EX", self.ttl))
        token = self._locks.pop(key, None) if leading else None
        if token is not None:
            commands.append(("EVAL", RELEASE.source, 1, f"{key}:lock", token))
        return self.store.send("cache_put", *commands) if commands else None

    def _beat(self) -> None:
        """Keep this worker's heartbeat alive from its first lock on. The first beat goes
        in the same batch as, and before, the look-up that may take a lock."""
        if self._heartbeat is None or self._heartbeat.done():
            self.store.send("cache_lock", self._heartbeat_command(), urgent=True)
            self._heartbeat = asyncio.ensure_future(self._keep_beating())

    def _heartbeat_command(self) -> tuple[Any, ...]:
        return ("SET", _heartbeat_key(self._holder), 1, "EX", HEARTBEAT_SECONDS)

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
            events = await self.get(key)
            if events is not None:
                return events
            lock = f"{key}:lock"
            token: Any = await self.store.execute("cache_lock", "GET", lock, fallback=None)
            if token is None:
                return await self.get(key)
            holder = token.split(b":")[0].decode(errors="replace")
            alive = await self.store.execute(
                "cache_lock", "EXISTS", _heartbeat_key(holder), fallback=1
            )
            if not alive:  # its holder died: take exactly that lock down, and generate
                release = ("EVAL", RELEASE.source, 1, lock, token)
                await self.store.execute("cache_lock", *release, fallback=None)
                return None
            await asyncio.sleep(WAIT_POLL_SECONDS[min(attempt, len(WAIT_POLL_SECONDS) - 1)])
            attempt += 1
        return None


def make_cache(ttl: int, store: Store | None) -> ResponseCache:
    return MemoryCache(ttl) if store is None else RedisCache(ttl, store)


def _heartbeat_key(holder: str) -> str:
    return f"chat:holder:{holder}"


def _loads(blob: bytes) -> list[Event] | None:
    try:
        return loads(blob)
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return None  # a corrupt entry is a miss, not a failed request
