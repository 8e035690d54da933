"""A generation: one reply, made once, in a task of its own, into a log that readers follow.

    source (backend, cache replay, an identical request's, or a stream followed from Redis)
        -> Generation._run: each event numbered, encoded once (by its surface's codec:
           events.py for /chat, completions.py for /v1), appended
        -> Log (log.py) -> any number of readers, each a Cursor (the responses)

What happens around its end is the chat layer's (`Finisher`: chat.py); who runs it, and
what becomes of it when its readers leave, is `Generations`' (generations.py).

A generation ends in one of these outcomes: `done` and `error` (its source ended so),
`cancelled` (stopped on request: readers get `done {"reason": "cancelled"}`),
`disconnected` (nobody was left to read it) and `shutdown` (the worker's drain ran out:
readers get the `shutdown` error event).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol, cast

from . import events
from .backends import BackendError
from .events import CANCELLED, EVENTS, INTERNAL, SHUTDOWN, TERMINAL, Codec, Event
from .log import Log
from .observability import metrics
from .observability.logging import get_logger

if TYPE_CHECKING:
    from .tokens import Usage

log = get_logger("service.generation")


class Finisher(Protocol):
    """What the chat layer does around a generation's end (chat.py builds it)."""

    async def before_done(self, generation: Generation, done: Event) -> Event:
        """Runs before `done` (natural or cancelled) reaches any reader: count the tokens
        and keep the turn. Returns the event to end with: `done` with its `usage`, or an
        error when the turn could not be kept."""
        ...

    def ending(self, generation: Generation) -> None:
        """Runs as an error ends it, before any reader sees that: count the tokens."""
        ...

    async def after_end(self, generation: Generation) -> None:
        """Runs once the generation has ended, whatever the outcome: hand back what its
        request's admission took."""
        ...


class _Following:
    """The finisher of a generation followed from another worker: that worker counts,
    keeps and hands back; here there is nothing to do."""

    async def before_done(self, generation: Generation, done: Event) -> Event:
        return done

    def ending(self, generation: Generation) -> None:
        return None

    async def after_end(self, generation: Generation) -> None:
        return None


FOLLOWING: Finisher = _Following()


class Publisher(Protocol):
    """Told of each event a generation appends (the Redis relay publishes it)."""

    def appended(self, generation: Generation) -> None: ...


class Generation:
    __slots__ = (
        "_finisher",
        "_prefix",
        "_publisher",
        "_running",
        "_source",
        "_stop_reason",
        "_task",
        "cache_mode",
        "codec",
        "ending",
        "first_content_at",
        "id",
        "idle_timer",
        "log",
        "outcome",
        "reasoning",
        "started",
        "text",
        "usage",
        "user",
    )

    def __init__(
        self,
        stream_id: str,
        user: str,
        source: AsyncIterator[Event],
        finisher: Finisher,
        publisher: Publisher,
        log: Log,
        codec: Codec = EVENTS,
    ) -> None:
        self.id = stream_id
        self.codec = codec
        self.user = user
        self.log = log
        self.text: list[str] = []  # every content event's text, retained or not
        self.reasoning: list[str] = []  # every thinking step's, for counting tokens
        self.usage: Usage | None = None  # its tokens, once it ends (the finisher's count)
        self.ending: Event | None = None  # its last event, when that was `done` or `error`
        self.outcome: str | None = None  # set once it has ended
        self.started = time.perf_counter()
        self.first_content_at: float | None = None
        self.cache_mode = "MISS"  # what X-Cache said when it started
        self.idle_timer: asyncio.TimerHandle | None = None  # while nobody reads it
        self._source = source
        self._finisher = finisher
        self._publisher = publisher
        # Each event's id names the stream and its place in it: `<stream>:<n>`.
        self._prefix = stream_id.encode() + b":"
        self._stop_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def wire_id(self, seq: int) -> bytes:
        return self._prefix + b"%d" % seq

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    @property
    def readers(self) -> int:
        return self.log.readers

    # --- the generation's own task ------------------------------------------------------

    def begin(self) -> None:
        """Its first event, appended at once (a resume in the same turn of the loop finds
        it): `start`, naming the stream."""
        self._append(Event("start", {"message": "connected", "stream": self.id}))

    def start(self, ended: Callable[[Generation], None]) -> None:
        """Run it, in a task of its own; `ended` is told at the very end, in that task."""
        self._task = asyncio.ensure_future(self._run(ended))

    async def _run(self, ended: Callable[[Generation], None]) -> None:
        outcome = "done"
        source = cast(AsyncGenerator[Event, None], self._source)
        try:
            self._running = True
            try:
                if self._stop_reason is not None:  # stopped before its task began
                    raise asyncio.CancelledError
                async for event in source:
                    name = event.name
                    if name == "done":
                        event = await self._finisher.before_done(self, event)
                        name = event.name
                    self._append(event)
                    # Not kept while the source takes its time over the next one: an idle
                    # stream's last event (and its data) would otherwise live on here.
                    del event
                    if name in TERMINAL:
                        outcome = events.outcome_of(name)
                        break
                    held_back = self.log.held_back
                    if held_back is not None:
                        await held_back  # a reader is too far behind: wait for it
            finally:
                await source.aclose()  # a stop closes the backend's upstream now
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
            self.log.close()
            with contextlib.suppress(Exception):
                await self._finisher.after_end(self)
            # Kept for its resume window: only what a late reader needs, compactly (the
            # text a string, not a string an event; the chat's objects let go).
            self.text = ["".join(self.text)]
            self.reasoning = ["\n".join(self.reasoning)] if self.reasoning else []
            self._finisher = FOLLOWING
            ended(self)

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
        if name == "content":
            self.text.append(event.data.get("text", ""))
            if self.first_content_at is None:
                self.first_content_at = time.perf_counter()
        elif name == "thinking":
            self.reasoning.append(event.data.get("step", ""))
        elif name in TERMINAL:
            if name == "error" and self.usage is None:
                self._finisher.ending(self)
            self.ending = event
        log = self.log
        wire = event.wire or self.codec.encode(event, self._prefix + b"%d" % (log.last_seq + 1))
        log.append(name, wire)
        self._publisher.appended(self)

    # --- stopping it ---------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """End it from outside: `cancelled` (a DELETE), `disconnected` (nobody reads) or
        `shutdown` (the drain ran out)."""
        if self._task is not None and not self._task.done() and self._stop_reason is None:
            self._stop_reason = reason
            # A task cancelled before it begins never runs its body (nor its `finally`):
            # one that has not begun finds the reason as it does.
            if self._running:
                self._task.cancel()

    async def wait_ended(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
