"""A generation: one reply, made once, in a task of its own, into a log that readers follow.

    source (backend, cache replay, or single-flight follow)
        -> Generation._run: each event numbered, encoded once, appended to the log
        -> any number of readers, each a `Cursor` at its own position (sse.EventStream)

A response is a reader; a resumed response is another reader of the same log. When its
last reader leaves, the generation is stopped, unless it may wait for one to come back
(`Generations`, CHAT_RESUME_WINDOW).

Memory stays bounded two ways. A reader that falls more than LAG_BYTES behind holds the
generation back, as a slow client held back the backend before generations existed: an
upstream then waits on TCP flow control rather than filling this worker's memory. And the
log keeps at most `max_bytes` of encoded events (CHAT_RESUME_MAX_BYTES) for readers yet to
come; older ones are dropped, and resuming from before them is refused. Entries hold the
wire bytes and the name only; the events' data is read back from the wire on the rare
occasions it is needed whole (the cache).

The events' wire form (`id: <n>`) is made here, once, so that every reader of a generation
sends the same bytes with the same ids.

A generation ends in one of these outcomes: `done` and `error` (its source ended so),
`cancelled` (stopped on request: readers get `done {"reason": "cancelled"}`),
`disconnected` (nobody was left to read it) and `shutdown` (the worker's drain ran out:
readers get the `shutdown` error event).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from .backends import BackendError
from .events import SHUTDOWN, TERMINAL, Event, encode

if TYPE_CHECKING:
    from .relay import Relay
    from .tokens import Usage
from .observability import metrics
from .observability.logging import get_logger

log = get_logger("service.generation")

CANCELLED = Event("done", {"reason": "cancelled"})
INTERNAL = Event("error", {"code": "internal", "message": "internal error"})
# How far (in encoded bytes) a reader may fall behind before the generation waits for it.
LAG_BYTES = 16 * 1024
DEFAULT_MAX_BYTES = 1024 * 1024


def new_stream_id() -> str:
    """128 random bits, URL-safe (RFC 4648 §5 alphabet, no padding)."""
    return secrets.token_urlsafe(16)


class Crowded(Exception):
    """A stream has as many readers as it may (CHAT_MAX_READERS_PER_STREAM)."""


class Entry:
    """One event of a generation: its number, its name, its bytes on the wire, and where
    those end in the generation's output (for measuring how far behind a reader is)."""

    __slots__ = ("end", "name", "seq", "wire")

    def __init__(self, seq: int, name: str, wire: bytes, end: int) -> None:
        self.seq = seq
        self.name = name
        self.wire = wire
        self.end = end

    @property
    def data_json(self) -> bytes:
        """The event's JSON data, as written on the wire."""
        start = self.wire.index(b"\ndata: ") + 7
        return self.wire[start:-2]


class Finisher(Protocol):
    """What the chat layer does around a generation's end (replies.py builds it)."""

    async def before_done(self, generation: Generation, done: Event) -> Event:
        """Runs before `done` (natural or cancelled) reaches any reader: count the tokens
        and keep the turn. Returns the event to end with: `done` with its `usage`, or an
        error when the turn could not be kept."""
        ...

    def ending(self, generation: Generation) -> None:
        """Runs as an error ends it, before any reader sees that: count the tokens."""
        ...

    async def after_end(self, generation: Generation) -> None:
        """Runs once the generation has ended, whatever the outcome: cache, slot, metrics."""
        ...


class Cursor:
    """A reader's place in a generation's log."""

    __slots__ = ("generation", "offset", "position", "waiter")

    def __init__(self, generation: Generation, position: int, offset: int) -> None:
        self.generation = generation
        self.position = position  # the last entry read
        self.offset = offset  # where that entry ends in the generation's output
        self.waiter: asyncio.Future[None] | None = None  # while it waits for more

    def available(self) -> list[Entry]:
        """The entries appended after this position so far."""
        generation = self.generation
        return generation.entries[self.position - generation.base :]

    async def wait(self) -> None:
        """Until the next entry is appended, or the generation ends."""
        generation = self.generation
        if generation.ended:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        generation.waiting += 1
        try:
            await self.waiter
        finally:
            self.waiter = None
            generation.waiting -= 1

    def sent(self, entry: Entry) -> None:
        self.position = entry.seq
        self.offset = entry.end
        generation = self.generation
        if generation.held_back is not None and generation.lag() <= LAG_BYTES:
            generation.release()


class Generation:
    __slots__ = (
        "_cursors",
        "_finisher",
        "_lag_check_at",
        "_prefix",
        "_retained_from",
        "_source",
        "_stop_reason",
        "_task",
        "base",
        "cache_mode",
        "entries",
        "first_content_at",
        "held_back",
        "id",
        "idle_timer",
        "max_bytes",
        "on_append",
        "on_ended",
        "on_idle",
        "outcome",
        "published",
        "reasoning",
        "started",
        "text",
        "total",
        "usage",
        "user",
        "waiting",
    )

    def __init__(
        self,
        stream_id: str,
        user: str,
        source: AsyncIterator[Event],
        finisher: Finisher,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.id = stream_id
        self.user = user
        self.entries: list[Entry] = []  # the retained ones; entries[0] has seq `base + 1`
        self.base = 0
        self.total = 0  # encoded bytes appended so far
        self.text: list[str] = []  # every content event's text, retained or not
        self.reasoning: list[str] = []  # every thinking step's, for counting tokens
        self.usage: Usage | None = None  # its tokens, once it ends (the finisher's count)
        self.outcome: str | None = None  # set once it has ended
        self.started = time.perf_counter()
        self.first_content_at: float | None = None
        self.max_bytes = max_bytes
        self.held_back: asyncio.Future[None] | None = None
        self._retained_from = 0  # where entries[0] begins in the output
        self._lag_check_at = LAG_BYTES
        self._source = source
        self._finisher = finisher
        # Each event's id names the stream and its place in it: `<stream>:<n>`.
        self._prefix = stream_id.encode() + b":"
        self.cache_mode = "MISS"  # what X-Cache said when it started
        self.idle_timer: asyncio.TimerHandle | None = None  # while nobody reads it
        self.waiting = 0  # readers waiting for the next entry
        self._cursors: list[Cursor] = []  # a list: most generations have one reader
        self._stop_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_idle: Callable[[Generation], None] | None = None
        self.on_ended: Callable[[Generation], None] | None = None
        self.on_append: Callable[[Generation], None] | None = None  # relay.py, with Redis
        self.published = 0  # the last entry relay.py has sent to Redis

    def wire_id(self, seq: int) -> bytes:
        return self._prefix + b"%d" % seq

    @property
    def last_seq(self) -> int:
        return self.base + len(self.entries)

    # --- the generation's own task ------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        metrics.generations_active.inc()
        outcome = "done"
        try:
            self._append(Event("start", {"message": "connected", "stream": self.id}))
            events = cast(AsyncGenerator[Event, None], self._source)
            try:
                async for event in events:
                    name = event.name
                    if name == "done":
                        event = await self._finisher.before_done(self, event)
                        name = event.name
                    self._append(event)
                    # Not kept while the source takes its time over the next one: an idle
                    # stream's last event (and its data) would otherwise live on here.
                    del event
                    if name in TERMINAL:
                        outcome = "done" if name == "done" else "error"
                        break
                    if self.held_back is not None:
                        await self.held_back  # a reader is too far behind: wait for it
            finally:
                await events.aclose()  # a stop closes the backend's upstream now
        except BackendError as exc:  # a failure the backend can name, once streaming
            metrics.backend_errors.labels(exc.code).inc()
            outcome = "error"
            self._append(Event("error", {"code": exc.code, "message": exc.message}))
        except asyncio.CancelledError:
            outcome = self._stop_reason or "shutdown"
            await self._end_stopped(outcome)
            if self._stop_reason is None:
                raise  # the server is cancelling us, not one of our own stops
        except Exception:
            log.exception("generation failed", stream=self.id)
            outcome = "error"
            self._append(INTERNAL)
        finally:
            self.outcome = outcome
            self._wake()
            metrics.generations_active.dec()
            with contextlib.suppress(Exception):
                await self._finisher.after_end(self)
            if self.on_ended is not None:
                self.on_ended(self)

    async def _end_stopped(self, reason: str) -> None:
        """The last event of a generation stopped from outside, for whoever still reads."""
        if reason == "cancelled":
            try:
                ending = await asyncio.shield(self._finisher.before_done(self, CANCELLED))
            except asyncio.CancelledError:
                ending = CANCELLED
            self._append(ending)
        elif reason == "shutdown":
            self._append(SHUTDOWN)
        # `disconnected`: nobody is left to tell.

    def _append(self, event: Event) -> None:
        name = event.name
        seq = self.base + len(self.entries) + 1
        if name == "content":
            self.text.append(event.data.get("text", ""))
            if self.first_content_at is None:
                self.first_content_at = time.perf_counter()
        elif name == "thinking":
            self.reasoning.append(event.data.get("step", ""))
        elif name == "error" and self.usage is None:
            self._finisher.ending(self)
        self._add(seq, name, encode(event, self._prefix + b"%d" % seq))

    def _add(self, seq: int, name: str, wire: bytes) -> None:
        total = self.total = self.total + len(wire)
        self.entries.append(Entry(seq, name, wire, total))
        if self.on_append is not None:
            self.on_append(self)
        if total - self._retained_from > self.max_bytes:
            self._trim()
        if self.waiting:
            self._wake()
        if total >= self._lag_check_at:  # checked every so many bytes, not every event
            self._lag_check_at = total + LAG_BYTES // 4
            if self._cursors and self.held_back is None and self.lag() > LAG_BYTES:
                self.held_back = asyncio.get_running_loop().create_future()

    def _trim(self) -> None:
        """Keep at most `max_bytes` of entries; attached readers are never that far behind."""
        keep_from = self.total - self.max_bytes
        drop = 0
        for entry in self.entries:
            if entry.end - len(entry.wire) >= keep_from:
                break
            drop += 1
        del self.entries[:drop]
        self.base += drop
        self._retained_from = self.entries[0].end - len(self.entries[0].wire)

    def _wake(self) -> None:
        for cursor in self._cursors:
            waiter = cursor.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def since(self, position: int) -> list[Entry]:
        """The retained entries after `position` (a reader behind the retained ones gets
        them from the first retained)."""
        return self.entries[max(0, position - self.base) :]

    def retains(self, position: int) -> bool:
        """Whether a reader may start after `position`: everything after it is kept."""
        return self.base <= position <= self.last_seq

    def lag(self) -> int:
        """How far (in encoded bytes) the slowest reader is behind."""
        if not self._cursors:
            return 0
        return self.total - min(cursor.offset for cursor in self._cursors)

    def release(self) -> None:
        held, self.held_back = self.held_back, None
        if held is not None and not held.done():
            held.set_result(None)

    # --- stopping it ---------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """End it from outside: `cancelled` (a DELETE), `disconnected` (nobody reads) or
        `shutdown` (the drain ran out)."""
        if self._task is not None and not self._task.done() and self._stop_reason is None:
            self._stop_reason = reason
            self._task.cancel()

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    async def wait_ended(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    # --- readers -------------------------------------------------------------------------

    def attach(self, after: int = 0) -> Cursor:
        """A reader from `after` on (check `retains` first)."""
        offset = self.total
        for entry in self.since(after):
            offset = entry.end - len(entry.wire)
            break
        cursor = Cursor(self, after, offset)
        self._cursors.append(cursor)
        return cursor

    def detach(self, cursor: Cursor) -> None:
        if cursor in self._cursors:
            self._cursors.remove(cursor)
        if self.held_back is not None and self.lag() <= LAG_BYTES:
            self.release()
        if not self._cursors and self.on_idle is not None:
            self.on_idle(self)

    @property
    def readers(self) -> int:
        return len(self._cursors)


class Deadline(Protocol):
    """The worker's drain, as far as a new generation cares: is its graceful period over?"""

    over: bool


class Generations:
    """This worker's generations, by stream id, and how long each may go on unread.

    When a generation's last reader leaves, it goes on for `window` seconds
    (CHAT_RESUME_WINDOW) for one to come back, then stops (`disconnected`); with a window of
    0 it stops at once, in the same turn of the loop. Once ended, it stays resumable for
    `window` more seconds, so the tail of a reply is never lost to a drop just before its
    last event. With Redis (`relay`), its events are in Redis too: a resume or a stop for a
    stream this worker does not run goes there, and after its end this worker keeps none.
    """

    def __init__(
        self,
        drain: Deadline | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        window: float = 0.0,
        relay: Relay | None = None,
        line: Any = None,
        max_readers: int = 4,
    ) -> None:
        self._running: dict[str, Generation] = {}
        self.max_readers = max_readers
        # The line each generation's end writes: the fast logger the access lines use (a
        # stdlib logging record per stream cost 5% of a worker's throughput).
        self._line = line or log
        self._drain = drain
        self.max_bytes = max_bytes
        self.window = window
        self.relay = relay
        self._checks: set[asyncio.Future[None]] = set()

    def start(
        self,
        user: str,
        source: AsyncIterator[Event],
        finisher: Finisher,
        cache_mode: str = "MISS",
    ) -> tuple[Generation, Cursor]:
        """Start a generation, with the cursor of the response that asked for it."""
        stream_id = new_stream_id()
        generation = Generation(stream_id, user, source, finisher, self.max_bytes)
        generation.cache_mode = cache_mode
        generation.on_idle = self._idle
        generation.on_ended = self._ended
        self._running[stream_id] = generation
        if self.relay is not None:
            self.relay.track(generation)
        cursor = generation.attach()
        generation.start()
        if self._drain is not None and self._drain.over:
            generation.stop("shutdown")  # its request came in after the drain ran out
        return generation, cursor

    async def resume(self, stream_id: str, user: str, after: int) -> Cursor | None:
        """A reader of `user`'s stream from after entry `after`, or None: unknown, ended
        past its window, not retained from there, or another user's, all alike. Crowded
        when it has `max_readers` already."""
        generation = self._running.get(stream_id)
        if generation is None and self.relay is not None:
            generation = await self.relay.mirror(stream_id, user, after)
            if generation is not None:
                generation.on_idle = self._mirror_idle
                generation.on_ended = self.forget
                self._running[stream_id] = generation
                cursor = generation.attach(after)
                generation.start()
                return cursor
        if generation is None or generation.user != user or not generation.retains(after):
            return None
        if generation.readers >= self.max_readers:
            raise Crowded
        if generation.idle_timer is not None:
            generation.idle_timer.cancel()
            generation.idle_timer = None
        return generation.attach(after)

    async def stop(self, stream_id: str, user: str) -> bool:
        """Stop `user`'s generation (`cancelled`) wherever it runs; False if there is none."""
        generation = self._running.get(stream_id)
        if generation is not None and generation.user == user and not _is_mirror(generation):
            generation.stop("cancelled")
            return True
        if self.relay is not None:
            return await self.relay.stop(stream_id, user)
        return generation is not None and generation.user == user

    def _idle(self, generation: Generation) -> None:
        """Its last reader left: it waits `window` for one to come back, or stops now."""
        if generation.ended:
            return
        if not self.window:
            generation.stop("disconnected")
            return
        loop = asyncio.get_running_loop()
        generation.idle_timer = loop.call_later(self.window, self._unread, generation)

    def _mirror_idle(self, generation: Generation) -> None:
        generation.stop("disconnected")  # nobody here reads it: stop following it

    def _unread(self, generation: Generation) -> None:
        generation.idle_timer = None
        if generation.readers or generation.ended:
            return
        if self.relay is None:
            generation.stop("disconnected")
            return
        checking = asyncio.ensure_future(self._unread_everywhere(generation))
        self._checks.add(checking)
        checking.add_done_callback(self._checks.discard)

    async def _unread_everywhere(self, generation: Generation) -> None:
        assert self.relay is not None
        if await self.relay.read_elsewhere(generation):  # a reader on another worker
            loop = asyncio.get_running_loop()
            generation.idle_timer = loop.call_later(1.0, self._unread, generation)
        elif not generation.readers:
            generation.stop("disconnected")

    def _ended(self, generation: Generation) -> None:
        if generation.idle_timer is not None:
            generation.idle_timer.cancel()
            generation.idle_timer = None
        usage = generation.usage
        self._line.info(
            "generation finished",
            stream=generation.id,
            user=generation.user,
            outcome=generation.outcome,
            events=generation.last_seq,
            duration_ms=round((time.perf_counter() - generation.started) * 1000, 2),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            usage=usage.source if usage else None,
        )
        if self.relay is not None:
            self.relay.ended(generation)  # resumable from Redis: nothing kept here
            self.forget(generation)
        elif self.window and generation.outcome != "shutdown":
            asyncio.get_running_loop().call_later(self.window, self.forget, generation)
        else:
            self.forget(generation)

    def forget(self, generation: Generation) -> None:
        if self._running.get(generation.id) is generation:
            del self._running[generation.id]

    def get(self, stream_id: str) -> Generation | None:
        return self._running.get(stream_id)

    def all(self) -> list[Generation]:
        return list(self._running.values())

    def running(self) -> list[Generation]:
        return [g for g in self._running.values() if not g.ended]

    async def wait_ended(self) -> None:
        """Until every generation running now has ended."""
        await asyncio.gather(*(g.wait_ended() for g in self.running()), return_exceptions=True)

    async def aclose(self) -> None:
        for generation in self.running():
            generation.stop("shutdown")
        await self.wait_ended()
        if self.relay is not None:
            await self.relay.aclose()


def _is_mirror(generation: Generation) -> bool:
    return type(generation) is not Generation
