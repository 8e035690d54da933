"""Server-Sent Events: the event type, its wire encoding, and the streaming response.

The response, `EventStream`, is one reader of a generation's log (generation.py): it sends
the entries after a position as they come. It is a pure ASGI callable rather than
sse-starlette's EventSourceResponse or a Starlette StreamingResponse with a task group: it
reads in the request's own task and adds one small helper task, `_watch`, which waits on
`receive()`: when the client goes, the reader stops and leaves the generation (which
decides, by CHAT_RESUME_WINDOW, whether to wait for a reader to come back or to stop now).

Once a tick, the worker's ticker (streaming.py) looks at every open stream: an idle one
gets a `: ping` comment (the WHATWG SSE comment syntax, ignored by every parser) so proxies
with idle timeouts do not cut a slow first token, and one whose send has been stuck behind
a client that stopped reading for `send_timeout` is cut off instead of holding a buffer
forever.

Shutdown: the worker's `Drain` ends still-open streams with an `error` event
`{"code": "shutdown"}` once the graceful period is over, because uvicorn on SIGTERM waits for
streaming responses without limit and never tells the application.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .events import PING, SHUTDOWN, TERMINAL, Event, encode
from .state import RequestRecord, StreamStats, record_of

if TYPE_CHECKING:
    from .generation import Cursor


class StreamHooks(Protocol):
    """Told when a stream opens and closes (streaming.py: the drain, the stream metrics)."""

    def opened(self, stream: EventStream) -> None: ...

    def closed(self, stream: EventStream) -> None: ...


logger = logging.getLogger("service.sse")

SSE_HEADERS = {
    "cache-control": "no-cache",
    # nginx honours this per response, so buffering stays off even behind a default config.
    "x-accel-buffering": "no",
}


class EventStream(Response):
    # Its own state in slots: 5,000 idle streams a worker is the target, and a Response's
    # instance dict grown by a dozen more attributes costs each of them about 400 bytes.
    __slots__ = (
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
        "cursor",
        "generation",
        "hooks",
        "ping_seconds",
        "record",
        "send_timeout",
        "stats",
    )

    media_type = "text/event-stream"

    def __init__(
        self,
        cursor: Cursor,
        *,
        ping_seconds: float,
        send_timeout: float,
        headers: dict[str, str] | None = None,
        hooks: StreamHooks | None = None,
    ) -> None:
        self.cursor = cursor
        self.generation = cursor.generation
        self.ping_seconds = ping_seconds
        self.send_timeout = send_timeout
        self.hooks = hooks
        self.record: RequestRecord | None = None
        self.stats = StreamStats()
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self._task: asyncio.Task[Any] | None = None
        self._stop_reason: str | None = None
        self._streaming = False
        self._sending = False
        self._finished = False
        # For the ticker: where the stream stood at the last tick, and the ping under way.
        self._send: Send | None = None
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
        self._task = asyncio.current_task()
        record = self.record = record_of(scope)
        record.stream = self.stats
        start_send, send = send, record.raw_send
        if self.hooks is not None:
            self.hooks.opened(self)
        watcher: asyncio.Task[None] | None = None
        try:
            await start_send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            self._send = send
            watcher = asyncio.create_task(self._watch(receive))
            await self._stream(send)
        except OSError:
            self.stats.outcome = "disconnected"  # gone before the first byte
        finally:
            # From here on nothing may cancel this task: what `on_end` does must run to
            # its end, whatever the client does now.
            self._finished = True
            if watcher is not None:
                watcher.cancel()
            if self._pinging is not None:
                self._pinging.cancel()
            self.generation.detach(self.cursor)
            record.usage = self.generation.usage
            if self.hooks is not None:
                self.hooks.closed(self)

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
                generation = cursor.generation
                while True:
                    batch = cursor.available()
                    if not batch:
                        if generation.ended:  # without a last event: nothing more will come
                            await send(END)
                            return
                        await cursor.wait()
                        continue
                    # Whatever has been appended since the last send goes in one write: the
                    # same bytes as an event at a time, far fewer trips through the server.
                    last = None
                    for index, entry in enumerate(batch):
                        name = entry.name
                        stats.count(name)
                        if name == "content":
                            if stats.first_content_at is None:
                                stats.first_content_at = time.perf_counter()
                        elif name in TERMINAL:
                            last = name
                            batch = batch[: index + 1]
                            break
                    body = batch[0].wire if len(batch) == 1 else b"".join([e.wire for e in batch])
                    await self._send_body(send, body, len(batch))
                    cursor.sent(batch[-1])
                    if last is not None:
                        stats.outcome = "done" if last == "done" else "error"
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
                await self._send_wire(send, encode(INTERNAL, self._next_id()), INTERNAL.name)
            await send(END)
        except OSError:
            stats.outcome = "disconnected"  # the client went away between events

    def _next_id(self) -> bytes:
        return self.generation.wire_id(self.cursor.position + 1)

    async def _send_shutdown(self, send: Send) -> None:
        await self._send_wire(send, encode(SHUTDOWN, self._next_id()), SHUTDOWN.name)
        await send(END)

    async def _send_wire(self, send: Send, body: bytes, name: str) -> None:
        self.stats.count(name)
        await self._send_body(send, body, 1)

    async def _send_body(self, send: Send, body: bytes, events: int) -> None:
        self._sending = True
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self._sending = False
        stats = self.stats
        stats.events += events
        stats.bytes += len(body)

    async def _watch(self, receive: Receive) -> None:
        """Wait on `receive()` for the client to go. One task per stream: an idle stream's
        memory is mostly its tasks, and 5,000 of them per worker is the target."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stop("disconnected")

    def tick(self, seconds: float) -> None:
        """Called every `seconds` by the worker's one ticker (streaming.Ticker) rather than
        by a timer per stream, so the hot path pays nothing: an idle stream is pinged
        between one and two intervals after its last event, and a send stuck behind a
        client that stopped reading is cut off after `send_timeout`."""
        if self._finished or self._send is None:
            return
        events = self.stats.events
        if events != self._seen:
            self._seen, self._idle, self._stalled = events, 0.0, 0.0
            return
        if self._sending:
            self._stalled += seconds
            if self._stalled >= self.send_timeout:
                self.stop("slow_client")
            return
        self._idle += seconds
        if self._idle >= self.ping_seconds and self._pinging is None:
            self._idle = 0.0
            self._pinging = asyncio.ensure_future(self._ping(self._send))

    async def _ping(self, send: Send) -> None:
        # A ping can block behind a full buffer as well as an event can.
        try:
            async with asyncio.timeout(self.send_timeout):
                await send({"type": "http.response.body", "body": PING, "more_body": True})
        except TimeoutError:
            self.stop("slow_client")
        except OSError:
            pass  # gone: the watcher says so
        finally:
            self._pinging = None


END = {"type": "http.response.body", "body": b"", "more_body": False}
INTERNAL = Event("error", {"code": "internal", "message": "internal error"})
