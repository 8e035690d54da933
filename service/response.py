"""The HTTP response of a stream: `EventStream`, one reader of a generation's log, and
`Responses`, the worker's open ones (the drain, the ticker, the stream metrics).

`EventStream` sends the log's entries after a position as they come. It is a pure ASGI
callable rather than sse-starlette's EventSourceResponse or a Starlette StreamingResponse
with a task group: it reads in the request's own task and adds one small helper task,
`_watch`, which waits on `receive()`: when the client goes, the reader stops and leaves
the generation (whose worker decides, by CHAT_RESUME_WINDOW, whether to wait for a reader
to come back or to stop now). While it waits, caught up, what its generation appends is
written to its socket without waking it: the worker's `Responses` writes, at the end of the
loop's turn, what each such stream has been given in that turn (`write_due`, writes.py),
in one write as its own task would. A paced stream then costs one task step per event,
not two, and a burst is still one write. Its own task wakes for the last entry, or for
what the socket cannot take at once.

Once a tick, the worker's one ticker (`Responses`) looks at every open stream: an idle one
gets a `: ping` comment (events.PING) so proxies with idle timeouts do not cut a slow
first token, and one whose send has been stuck behind a client that stopped reading for
`send_timeout` is cut off instead of holding a buffer forever.

Shutdown: the worker's `Drain` ends still-open streams with the `shutdown` error event
once the graceful period is over, because uvicorn on SIGTERM waits for streaming
responses without limit and never tells the application.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import events
from .events import INTERNAL, PING, SHUTDOWN, TERMINAL
from .log import KINDS
from .observability import metrics
from .record import RequestRecord, StreamStats, record_of
from .writes import Writer, write_now, writer

if TYPE_CHECKING:
    from .generation import Generation
    from .log import Batch, Cursor
    from .shutdown import Drain

logger = logging.getLogger("service.response")

SSE_HEADERS = {
    "cache-control": "no-cache",
    # nginx honours this per response, so buffering stays off even behind a default config.
    "x-accel-buffering": "no",
}
END = {"type": "http.response.body", "body": b"", "more_body": False}


class Readers(Protocol):
    """Where a reader leaves its generation (generations.Generations)."""

    def leave(self, generation: Generation, cursor: Cursor) -> None: ...


class EventStream(Response):
    # Its own state in slots: 5,000 idle streams a worker is the target, and a Response's
    # instance dict grown by a dozen more attributes costs each of them about 400 bytes.
    __slots__ = (
        "_due",
        "_finished",
        "_idle",
        "_pinging",
        "_seen",
        "_send",
        "_sending",
        "_stalled",
        "_stop_reason",
        "_streaming",
        "_task",
        "_writer",
        "cursor",
        "generation",
        "record",
        "responses",
        "stats",
    )

    media_type = "text/event-stream"

    def __init__(
        self,
        generation: Generation,
        cursor: Cursor,
        responses: Responses,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.generation = generation
        self.cursor = cursor
        self.responses = responses
        self.record: RequestRecord | None = None
        self.stats = StreamStats()
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {}), "X-Stream-ID": generation.id})
        self._task: asyncio.Task[Any] | None = None
        self._stop_reason: str | None = None
        self._streaming = False
        self._sending = False
        self._finished = False
        # For the ticker: where the stream stood at the last tick, and the ping under way.
        self._send: Send | None = None
        self._writer: Writer | None = None  # the socket, for entries written at once
        self._due = False  # entries to write at the end of this turn of the loop
        self._seen = 0
        self._idle = self._stalled = 0.0
        self._pinging: asyncio.Future[None] | None = None

    def stop(self, reason: str) -> None:
        """End the stream from outside its task: `disconnected`, `slow_client` or `shutdown`.
        A stream stopped before it began (one that starts after the drain's deadline) ends
        as soon as it begins."""
        if self._task is not None and self._stop_reason is None and not self._finished:
            self._stop_reason = reason
            if self._streaming:
                self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Within the app, only the response's head; its body is the outermost middleware's
        to run (`record.body`: observability/middleware.py), once the app's frames are gone
        (service/__init__.py lists this among the deviations)."""
        record = self.record = record_of(scope)
        record.stream = self.stats
        record.stream_id = self.generation.id
        record.body = self.run_body
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        except OSError:
            self.stats.outcome = "disconnected"  # gone before the first byte
            return
        # uvicorn's own `send`: body chunks skip the middleware wrappers (service/__init__.py).
        self._send = record.raw_send
        self._writer = writer(record.raw_send)

    async def run_body(self, receive: Receive) -> None:
        """The stream itself, in the request's own task, read from the generation's log."""
        self._task = asyncio.current_task()
        self.responses.opened(self)
        send = self._send
        watcher: asyncio.Task[None] | None = None
        try:
            if send is not None:
                watcher = asyncio.create_task(self._watch(receive))
                await self._stream(send)
        except OSError:
            self.stats.outcome = "disconnected"  # the client went away between events
        finally:
            # From here on nothing may cancel this task: leaving the generation must run to
            # its end, whatever the client does now.
            self._finished = True
            self.cursor.deliver = None
            if watcher is not None:
                watcher.cancel()
            if self._pinging is not None:
                self._pinging.cancel()
            assert self.record is not None
            self.record.usage = self.generation.usage
            self.responses.closed(self)

    async def _stream(self, send: Send) -> None:
        stats = self.stats
        if self._stop_reason == "shutdown":  # stopped before it began: the drain is over
            stats.outcome = "shutdown"
            await self._send_shutdown(send)
            return
        self._streaming = True
        try:
            try:
                cursor = self.cursor
                log = cursor.log
                if self._writer is not None:
                    cursor.deliver = self._deliver  # while it waits: see the docstring
                while True:
                    # Whatever has been appended since the last send goes in one write: the
                    # same bytes as an event at a time, far fewer trips through the server.
                    batch = cursor.take()
                    if not batch.kinds:
                        if log.closed:  # without a last event: nothing more will come
                            await send(END)
                            return
                        await cursor.wait()
                        continue
                    stats.count(batch.kinds)
                    await self._send_body(send, batch.body, len(batch.kinds))
                    cursor.sent(batch)
                    last = batch.last
                    if last in TERMINAL:
                        stats.outcome = events.outcome_of(last)
                        await send(END)
                        self._finished = True
                        return
            except asyncio.CancelledError:
                if self._stop_reason is None:
                    stats.outcome = "shutdown"  # the server itself is cancelling us
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                stats.outcome = "shutdown" if self._stop_reason == "shutdown" else "disconnected"
                if self._stop_reason != "shutdown":
                    return  # nobody is reading any more
                await self._send_shutdown(send)
                return
            except Exception:
                logger.exception("stream failed")
                stats.outcome = "error"
                await self._send_event(send, INTERNAL)
            await send(END)
        except OSError:
            stats.outcome = "disconnected"  # the client went away between events

    async def _send_shutdown(self, send: Send) -> None:
        await self._send_event(send, SHUTDOWN)
        await send(END)

    async def _send_event(self, send: Send, event: events.Event) -> None:
        """An event of this response's own, numbered after the last one it sent."""
        self.stats.count(bytes([KINDS[event.name]]))
        generation = self.generation
        wire = generation.codec.encode(event, generation.wire_id(self.cursor.position + 1))
        await self._send_body(send, wire, 1)

    async def _send_body(self, send: Send, body: bytes, count: int) -> None:
        self._sending = True
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self._sending = False
        stats = self.stats
        stats.events += count
        stats.bytes += len(body)

    def _deliver(self) -> bool:
        """Its generation appended while it waits: written at the end of this turn."""
        if not self._due:
            self._due = True
            self.responses.write_soon(self)
        return True

    def write_due(self) -> None:
        """What was appended this turn, in one write now (writes.py) while the stream
        still waits; when it cannot be (the last entry, a socket that cannot take it at
        once) the stream's own task is woken to send it."""
        self._due = False
        cursor = self.cursor
        waiter = cursor.waiter
        if waiter is None or waiter.done():
            return  # its own task has it
        batch = cursor.take()
        if not batch.kinds or (batch.last not in TERMINAL and self._written(batch)):
            return
        waiter.set_result(None)

    def _written(self, batch: Batch) -> bool:
        assert self._writer is not None
        try:
            if not write_now(self._writer, batch.body):
                return False
        except Exception:  # the stream's own send meets it, and says so
            return False
        stats = self.stats
        stats.count(batch.kinds)
        stats.events += len(batch.kinds)
        stats.bytes += len(batch.body)
        self.cursor.sent(batch)
        return True

    async def _watch(self, receive: Receive) -> None:
        """Wait on `receive()` for the client to go. One task per stream: an idle stream's
        memory is mostly its tasks, and 5,000 of them per worker is the target."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stop("disconnected")

    def tick(self, seconds: float, ping_seconds: float, send_timeout: float) -> None:
        """Called every `seconds` by the worker's one ticker rather than by a timer per
        stream, so the hot path pays nothing: an idle stream is pinged between one and two
        intervals after its last event, and a send stuck behind a client that stopped
        reading is cut off after `send_timeout`."""
        if self._finished or self._send is None:
            return
        events_sent = self.stats.events
        if events_sent != self._seen:
            self._seen, self._idle, self._stalled = events_sent, 0.0, 0.0
            return
        if self._sending:
            self._stalled += seconds
            if self._stalled >= send_timeout:
                self.stop("slow_client")
            return
        self._idle += seconds
        if self._idle >= ping_seconds and self._pinging is None:
            self._idle = 0.0
            self._pinging = asyncio.ensure_future(self._ping(self._send, send_timeout))

    async def _ping(self, send: Send, send_timeout: float) -> None:
        # A ping can block behind a full buffer as well as an event can.
        try:
            async with asyncio.timeout(send_timeout):
                await send({"type": "http.response.body", "body": PING, "more_body": True})
        except TimeoutError:
            self.stop("slow_client")
        except OSError:
            pass  # gone: the watcher says so
        finally:
            self._pinging = None


class Responses:
    """This worker's open event streams: each registered with the drain while open, looked
    at by one ticker (`ping_seconds`, `send_timeout`; closures or timers per stream cost
    each 400 bytes), counted in the stream metrics when it closes, and its cursor handed
    back to its generation's `Readers`."""

    def __init__(
        self, drain: Drain, readers: Readers, ping_seconds: float, send_timeout: float
    ) -> None:
        self.drain = drain
        self.readers = readers
        self.ping_seconds = ping_seconds
        self.send_timeout = send_timeout
        self.tick_seconds = min(ping_seconds, send_timeout)
        self._open: set[EventStream] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._due: list[EventStream] = []  # to write at the end of this turn

    def respond(
        self, generation: Generation, cursor: Cursor, headers: dict[str, str]
    ) -> EventStream:
        return EventStream(generation, cursor, self, headers)

    def write_soon(self, stream: EventStream) -> None:
        """`stream.write_due()` at the end of this turn of the loop, with every other
        stream given entries in it: one callback a turn, not a task step a stream."""
        if not self._due:
            asyncio.get_running_loop().call_soon(self._write_due)
        self._due.append(stream)

    def _write_due(self) -> None:
        due, self._due = self._due, []
        for stream in due:
            stream.write_due()

    def opened(self, stream: EventStream) -> None:
        self.drain.add(stream)
        self._open.add(stream)
        metrics.streams_active.inc()
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        seconds = self.tick_seconds
        while self._open:
            await asyncio.sleep(seconds)
            for stream in list(self._open):
                stream.tick(seconds, self.ping_seconds, self.send_timeout)

    def closed(self, stream: EventStream) -> None:
        self.readers.leave(stream.generation, stream.cursor)
        self.drain.streams.discard(stream)
        self._open.discard(stream)
        metrics.streams_active.dec()
        stats = stream.stats
        assert stream.record is not None
        started = stream.record.started
        metrics.stream_duration.labels(stats.outcome).observe(time.perf_counter() - started)
        if stats.first_content_at is not None:
            metrics.time_to_first_token.observe(stats.first_content_at - started)
        for name, count in stats.counts.items():
            metrics.stream_events.labels(name).inc(count)

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
