"""Response cache: a completed stream's events, replayed at once for an identical request,
and what a generation streams: the stored reply, an identical request's, or the backend's.

The key is a hash of backend, model and message (and the user, with CHAT_CACHE_SCOPE=user,
the default), so a changed model never serves another model's reply. Only replies that
ended by themselves are stored (never an error, a disconnect, a shutdown, or a reply cut
short by `length` or `content_filter`), and only up to MAX_ENTRY_BYTES: their blocks as the
wire had them, less their ids (events.without_id). Entries live in Redis with
CHAT_CACHE_TTL when it is configured (in_redis.py), else in a small per-worker LRU
(in_memory.py).

Identical requests that miss at the same time generate once: the first takes a short lock
and generates; the others wait, pinged like any idle stream, and then replay the stored
events (`followed`). If the first fails, a waiter generates itself.

A request's part in all this is its `CacheTicket`, taken at admission (admission/ticket.py)
and settled when its generation ends.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .. import events
from ..errors import UpstreamFailed
from ..events import Event
from ..redis import keys

if TYPE_CHECKING:
    from ..generation import Generation

MAX_ENTRY_BYTES = 256 * 1024
# The longest a waiter waits for a live leader (a very long generation).
PATIENCE_SECONDS = 120


def cache_key(backend: str, model: str, message: str, user: str | None = None) -> str:
    """With CHAT_CACHE_SCOPE=user, `user` keeps each user's replies their own."""
    scope = "" if user is None else f"\0{user}"
    return keys.cache_entry(
        hashlib.sha256(f"{backend}\0{model}\0{message}{scope}".encode()).hexdigest()
    )


def entry_of(generation: Generation) -> bytes | None:
    """An entry: a generation's events less its `start` (a replay begins its own), written
    as /chat writes them, less each one's `id:` line (a replay gives them ids of its own);
    None past MAX_ENTRY_BYTES. A /chat stream's own bytes, sliced: far cheaper than
    encoding its events again. Another surface's stream is written down from what it said
    (its thinking steps, then its text, then its end)."""
    if generation.codec is events.EVENTS:
        span = generation.log.span(1)
        wires = span.wires() if span is not None else []
    else:
        said = [Event("thinking", {"step": step}) for step in generation.reasoning]
        said += [Event("content", {"text": text}) for text in generation.text]
        if generation.ending is not None:
            said.append(generation.ending)
        wires = [events.encode(event, b"") for event in said]
    blob = b"".join([events.without_id(wire) for wire in wires])
    return blob if len(blob) <= MAX_ENTRY_BYTES else None


def replay_of(blob: bytes) -> list[Event] | None:
    """The events of an entry; None for a corrupt one (a miss, not a failed request)."""
    try:
        return [events.decode(block) for block in events.blocks(blob)]
    except (ValueError, TypeError):
        return None


@dataclass(slots=True)
class CacheTicket:
    """The cache's part in one request: its key (None: the cache is off for it), what
    `X-Cache` says, the stored events of a hit, whether this request leads the identical
    ones that wait for it, and whether what it streams is a replay (nothing new to store
    or count)."""

    key: str | None
    mode: str  # OFF | BYPASS | MISS | HIT
    events: list[Event] | None = None
    leading: bool = False
    replayed: bool = False

    @property
    def single_flight(self) -> bool:
        return self.mode == "MISS"


class ResponseCache:
    """What both stores share: single flight within this worker (a future per key that
    its leader resolves), and waiting for a leader. `_find`, `get`, `_store` and
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
        found, may_lead = await self._find(key)
        if found is not None:
            return found, False
        if not may_lead:
            return None, False
        self._flights[key] = None
        return None, True

    async def _find(self, key: str) -> tuple[list[Event] | None, bool]:
        raise NotImplementedError

    async def get(self, key: str) -> list[Event] | None:
        raise NotImplementedError

    def finish(self, key: str, blob: bytes | None, leading: bool) -> asyncio.Future[Any] | None:
        """Store a completed stream (its `entry_of`, or None for one that failed) and, for
        the leader, release the lock and then wake the waiters. Nobody waits for the write:
        it goes with whatever else the stream's end sends (its slot release)."""
        written = self._store(key, blob, leading)
        if not leading:
            return written
        if written is None:
            self._land(key)
        else:
            written.add_done_callback(lambda _: self._land(key))
        return written

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

    # --- what a generation streams -------------------------------------------------------

    async def source(
        self, ticket: CacheTicket, open_backend: Callable[[], Awaitable[AsyncIterator[Event]]]
    ) -> AsyncIterator[Event]:
        """The stored reply, an identical request's, or the backend's (opened here, so that
        a refusal is still a JSON error with its status)."""
        if ticket.events is not None:
            ticket.replayed = True
            return _replayed(ticket.events)
        if ticket.single_flight and not ticket.leading:
            key = ticket.key
            assert key is not None
            return _followed(open_backend, lambda: self.wait(key), ticket)
        return await open_backend()


def make_cache(ttl: int, store: Any) -> ResponseCache:
    if store is None:
        from .in_memory import MemoryCache

        return MemoryCache(ttl)
    from .in_redis import RedisCache

    return RedisCache(ttl, store)


async def _replayed(stored: list[Event]) -> AsyncIterator[Event]:
    for event in stored:
        yield event


async def _followed(
    open_backend: Callable[[], Awaitable[AsyncIterator[Event]]],
    wait: Callable[[], Awaitable[list[Event] | None]],
    ticket: CacheTicket,
) -> AsyncIterator[Event]:
    """An identical request is generating elsewhere: wait for it (pings keep this stream
    alive meanwhile) and replay what it stored; if it failed, generate here after all."""
    stored = await wait()
    if stored is not None:
        ticket.replayed = True  # what it stored is stored already, and cost nothing here
        for event in stored:
            yield event
        return
    try:
        upstream = cast(AsyncGenerator[Event, None], await open_backend())
    except UpstreamFailed as exc:
        yield Event("error", {"code": exc.code, "message": exc.detail})
        return
    async with aclosing(upstream):
        async for event in upstream:
            yield event
