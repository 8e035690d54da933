"""This worker's generations (generation.py), where else they can be reached, and what
becomes of one when its readers leave.

A response is a reader of a generation's log; a resumed response is another. When its last
reader leaves, the generation goes on for CHAT_RESUME_WINDOW for one to come back, then
stops (`disconnected`).

Where else a generation can be reached is one protocol, `Elsewhere`, with two twins chosen
at start-up: `Local` (no Redis: nothing is elsewhere; a stop finds nothing, a resume follows
nothing) and the Redis relay (redis/relay.py), which publishes each generation's log to
Redis and follows generations that run on other workers. A followed generation is an
ordinary one whose source is the relay's; its own worker finishes it (`FOLLOWING`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .events import EVENTS, Codec, Event
from .generation import FOLLOWING, Finisher, Generation, Publisher
from .log import DEFAULT_MAX_BYTES, Cursor, Log
from .observability import metrics
from .observability.logging import get_logger

log = get_logger("service.generation")


def new_stream_id() -> str:
    """128 random bits, URL-safe (RFC 4648 §5 alphabet, no padding)."""
    return secrets.token_urlsafe(16)


class Crowded(Exception):
    """A stream has as many readers as it may (CHAT_MAX_READERS_PER_STREAM)."""


@dataclass(frozen=True, slots=True)
class Followed:
    """A generation running elsewhere, as a worker may follow it: where its retained log
    begins, that log so far (name and bytes of each event), and a source of the rest."""

    first: int
    history: list[tuple[str, bytes]]
    source: AsyncIterator[Event]
    codec: Codec = EVENTS  # the stream's surface's, for the events it ends with here


class Elsewhere(Publisher, Protocol):
    """Where else generations can be reached: other workers and pods (the Redis relay), or
    nowhere (`Local`)."""

    def started(self, generation: Generation) -> None:
        """A generation began in this worker."""
        ...

    def ended(self, generation: Generation) -> bool:
        """It ended here; whether it stays resumable elsewhere (so nothing is kept here)."""
        ...

    def detached(self, generation: Generation) -> None:
        """Its last reader here left: the client may come back on another worker."""
        ...

    async def follow(self, stream_id: str, user: str, after: int) -> Followed | None:
        """`user`'s stream running (or ended) elsewhere, able to serve from after entry
        `after`; None when there is none, the same for every kind of miss."""
        ...

    async def stop(self, stream_id: str, user: str) -> bool:
        """Ask the worker running `user`'s stream to stop it; False if there is none."""
        ...

    async def read_elsewhere(self, generation: Generation) -> bool:
        """Whether a reader elsewhere follows this worker's generation now."""
        ...

    async def aclose(self) -> None: ...


class Local:
    """No Redis: a generation lives in its worker only; there is nothing elsewhere."""

    def started(self, generation: Generation) -> None:
        return None

    def appended(self, generation: Generation) -> None:
        return None

    def ended(self, generation: Generation) -> bool:
        return False

    def detached(self, generation: Generation) -> None:
        return None

    async def follow(self, stream_id: str, user: str, after: int) -> Followed | None:
        return None

    async def stop(self, stream_id: str, user: str) -> bool:
        return False

    async def read_elsewhere(self, generation: Generation) -> bool:
        return False

    async def aclose(self) -> None:
        return None


class Deadline(Protocol):
    """The worker's drain, as far as a new generation cares: is its graceful period over?"""

    over: bool


class Generations:
    """This worker's generations, by stream id, and how long each may go on unread.

    When a generation's last reader leaves, it goes on for `window` seconds
    (CHAT_RESUME_WINDOW) for one to come back, then stops (`disconnected`); with a window of
    0 it stops at once, in the same turn of the loop. Once ended, it stays resumable for
    `window` more seconds, so the tail of a reply is never lost to a drop just before its
    last event (from Redis when `elsewhere` keeps it, else from here). A generation followed
    from elsewhere stops being followed as soon as nobody here reads it.
    """

    def __init__(
        self,
        elsewhere: Elsewhere | None = None,
        drain: Deadline | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        window: float = 0.0,
        max_readers: int = 4,
        line: Any = None,
    ) -> None:
        self.elsewhere: Elsewhere = elsewhere or Local()
        self.max_bytes = max_bytes
        self.window = window
        self.max_readers = max_readers
        self._drain = drain
        # The line each generation's end writes: the fast logger the access lines use (a
        # stdlib logging record per stream cost 5% of a worker's throughput).
        self._line = line or log
        self._owned: dict[str, Generation] = {}  # run here
        self._followed: dict[str, Generation] = {}  # run elsewhere, followed here
        self._checks: set[asyncio.Future[None]] = set()

    def start(
        self,
        user: str,
        source: AsyncIterator[Event],
        finisher: Finisher,
        cache_mode: str,
        codec: Codec = EVENTS,
    ) -> tuple[Generation, Cursor]:
        """Start a generation, with the cursor of the response that asked for it."""
        stream_id = new_stream_id()
        generation = Generation(
            stream_id, user, source, finisher, self.elsewhere, Log(self.max_bytes), codec
        )
        generation.cache_mode = cache_mode
        self._owned[stream_id] = generation
        metrics.generations_active.inc()  # this worker's own, not those it follows
        self.elsewhere.started(generation)
        generation.begin()
        cursor = generation.log.attach()
        generation.start(self._ended)
        if self._drain is not None and self._drain.over:
            generation.stop("shutdown")  # its request came in after the drain ran out
        return generation, cursor

    async def resume(
        self, stream_id: str, user: str, after: int, codec: str | None = None
    ) -> tuple[Generation, Cursor] | None:
        """A reader of `user`'s stream from after entry `after`, or None: unknown, ended
        past its window, not retained from there, another user's, or (`codec`) written for
        another surface, all alike. Crowded when it has `max_readers` already."""
        generation = self._owned.get(stream_id) or self._followed.get(stream_id)
        if generation is None:
            found = await self._follow(stream_id, user, after)
            if found is not None and codec is not None and found[0].codec.name != codec:
                self.leave(*found)  # followed for nothing: stop following it
                return None
            return found
        if generation.user != user or not generation.log.retains(after):
            return None
        if codec is not None and generation.codec.name != codec:
            return None
        if generation.readers >= self.max_readers:
            raise Crowded
        if generation.idle_timer is not None:
            generation.idle_timer.cancel()
            generation.idle_timer = None
        return generation, generation.log.attach(after)

    async def _follow(
        self, stream_id: str, user: str, after: int
    ) -> tuple[Generation, Cursor] | None:
        followed = await self.elsewhere.follow(stream_id, user, after)
        if followed is None:
            return None
        if stream_id in self._followed:  # another resume got here first, meanwhile
            await cast(AsyncGenerator[Event, None], followed.source).aclose()
            return await self.resume(stream_id, user, after)
        history = Log(self.max_bytes, base=followed.first - 1)
        for name, wire in followed.history:
            history.append(name, wire)
        generation = Generation(
            stream_id, user, followed.source, FOLLOWING, Local(), history, followed.codec
        )
        self._followed[stream_id] = generation
        cursor = history.attach(after)
        generation.start(self._unfollowed)
        return generation, cursor

    def leave(self, generation: Generation, cursor: Cursor) -> None:
        """A reader left: with none left, the generation waits `window` for one to come back
        (or, followed from elsewhere, stops being followed now)."""
        generation.log.detach(cursor)
        if generation.readers or generation.ended:
            return
        if self._followed.get(generation.id) is generation or not self.window:
            generation.stop("disconnected")
            return
        self.elsewhere.detached(generation)
        loop = asyncio.get_running_loop()
        generation.idle_timer = loop.call_later(self.window, self._unread, generation)

    async def stop(self, stream_id: str, user: str) -> bool:
        """Stop `user`'s generation (`cancelled`) wherever it runs; False if there is none."""
        generation = self._owned.get(stream_id)
        if generation is not None and generation.user == user:
            generation.stop("cancelled")
            return True
        return await self.elsewhere.stop(stream_id, user)

    def _unread(self, generation: Generation) -> None:
        generation.idle_timer = None
        if generation.readers or generation.ended:
            return
        checking = asyncio.ensure_future(self._unread_everywhere(generation))
        self._checks.add(checking)
        checking.add_done_callback(self._checks.discard)

    async def _unread_everywhere(self, generation: Generation) -> None:
        if await self.elsewhere.read_elsewhere(generation):  # a reader on another worker
            loop = asyncio.get_running_loop()
            generation.idle_timer = loop.call_later(1.0, self._unread, generation)
        elif not generation.readers:
            generation.stop("disconnected")

    def _ended(self, generation: Generation) -> None:
        metrics.generations_active.dec()
        if generation.idle_timer is not None:
            generation.idle_timer.cancel()
            generation.idle_timer = None
        usage = generation.usage
        self._line.info(
            "generation finished",
            stream=generation.id,
            user=generation.user,
            outcome=generation.outcome,
            events=generation.log.last_seq,
            duration_ms=round((time.perf_counter() - generation.started) * 1000, 2),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            usage=usage.source if usage else None,
        )
        if self.elsewhere.ended(generation) or not self.window:
            self._forget(generation)  # resumable from Redis, or not at all: nothing kept here
        elif generation.outcome == "shutdown":
            self._forget(generation)
        else:
            asyncio.get_running_loop().call_later(self.window, self._forget, generation)

    def _unfollowed(self, generation: Generation) -> None:
        if self._followed.get(generation.id) is generation:
            del self._followed[generation.id]

    def _forget(self, generation: Generation) -> None:
        if self._owned.get(generation.id) is generation:
            del self._owned[generation.id]

    def get(self, stream_id: str) -> Generation | None:
        return self._owned.get(stream_id) or self._followed.get(stream_id)

    def all(self) -> Iterable[Generation]:
        return [*self._owned.values(), *self._followed.values()]

    def running(self) -> list[Generation]:
        return [g for g in self.all() if not g.ended]

    async def wait_ended(self) -> None:
        """Until every generation running now has ended."""
        await asyncio.gather(*(g.wait_ended() for g in self.running()), return_exceptions=True)

    async def aclose(self) -> None:
        for generation in self.running():
            generation.stop("shutdown")
        await self.wait_ended()
        await self.elsewhere.aclose()
