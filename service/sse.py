"""Server-Sent Events: the event type, its wire encoding, and the streaming response.

The response is a pure ASGI callable rather than sse-starlette's EventSourceResponse or a
Starlette StreamingResponse with a task group: it runs the generator in the request's own
task and adds one small helper, `_watch`, which waits on `receive()`:

- when the client goes, it cancels the generation, so an upstream request is closed within
  the same event-loop turn;
- once a ping interval it wakes: an idle stream gets a `: ping` comment (the WHATWG SSE
  comment syntax, ignored by every parser) so proxies with idle timeouts do not cut a slow
  first token, and a stream whose send has been stuck behind a client that stopped reading
  for `send_timeout` is cut off instead of holding a buffer forever.

Shutdown: the worker's `Drain` ends still-open streams with an `error` event
`{"code": "shutdown"}` once the graceful period is over, because uvicorn on SIGTERM waits for
streaming responses without limit and never tells the application.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

logger = logging.getLogger("service.sse")

PING = b": ping\n\n"
TERMINAL = frozenset({"done", "error"})
SSE_HEADERS = {
    "cache-control": "no-cache",
    # nginx honours this per response, so buffering stays off even behind a default config.
    "x-accel-buffering": "no",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: `name` goes to the `event:` field, `data` is JSON on one `data:` line."""

    name: str
    data: dict[str, Any]


SHUTDOWN = Event("error", {"code": "shutdown", "message": "server is restarting"})


def encode(event: Event, event_id: int) -> bytes:
    # JSON escapes CR and LF inside strings, so the payload is always one `data:` line.
    # orjson writes the same compact UTF-8 as json.dumps(ensure_ascii=False, separators=
    # (",", ":")) at a tenth of the cost; it refuses lone surrogates (which a percent-encoded
    # path can carry), and those take the ASCII-escaping path instead.
    try:
        data = orjson.dumps(event.data)
    except TypeError:
        data = json.dumps(event.data, separators=(",", ":")).encode()
    name = _NAMES.get(event.name) or event.name.encode()
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name, data)


_NAMES = {name: name.encode() for name in ("start", "thinking", "content", "done", "error")}


@dataclass(slots=True)
class StreamStats:
    """What the access line and the metrics say about one stream when it ends."""

    outcome: str = "done"
    events: int = 0
    bytes: int = 0
    first_content_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[Event],
        *,
        ping_seconds: float,
        send_timeout: float,
        headers: dict[str, str] | None = None,
        on_start: Callable[[EventStream], None] | None = None,
        on_end: Callable[[EventStream], Awaitable[None]] | None = None,
    ) -> None:
        self.events = events
        self.ping_seconds = ping_seconds
        self.send_timeout = send_timeout
        self.on_start = on_start
        self.on_end = on_end
        self.stats = StreamStats()
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self._task: asyncio.Task[Any] | None = None
        self._stop_reason: str | None = None
        self._streaming = False
        self._sending = False
        self._finished = False

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
        state = scope.setdefault("state", {})
        state["stream"] = self.stats
        start_send, send = send, state.get("raw_send", send)
        if self.on_start:
            self.on_start(self)
        watcher: asyncio.Task[None] | None = None
        try:
            await start_send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            watcher = asyncio.create_task(self._watch(receive, send))
            await self._stream(send)
        except OSError:
            self.stats.outcome = "disconnected"  # gone before the first byte
        finally:
            # From here on nothing may cancel this task: the slot release in `on_end`
            # must run to its end, whatever the client does now.
            self._finished = True
            if watcher is not None:
                watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]
            if self.on_end:
                await self.on_end(self)

    async def _stream(self, send: Send) -> None:
        stats = self.stats
        event_id = 0
        if self._stop_reason == "shutdown":  # stopped before it began: the drain is over
            stats.outcome = "shutdown"
            await self._send_event(send, SHUTDOWN, 1)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        self._streaming = True
        try:
            try:
                async for event in self.events:
                    event_id += 1
                    await self._send_event(send, event, event_id)
                    name = event.name
                    if name == "content":
                        if stats.first_content_at is None:
                            stats.first_content_at = time.perf_counter()
                    elif name in TERMINAL:
                        # The client has its whole answer now; what the generator still does
                        # (storing the reply for the cache, say) happens after, not before,
                        # the end of the response.
                        stats.outcome = "done" if name == "done" else "error"
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        self._finished = True
                        await self._run_to_end()
                        return
            except asyncio.CancelledError:
                if self._stop_reason is None:
                    stats.outcome = "shutdown"  # the server itself is cancelling us
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                stats.outcome = "shutdown" if self._stop_reason == "shutdown" else "disconnected"
                if self._stop_reason != "shutdown":
                    return  # nobody is reading any more
                await self._send_event(send, SHUTDOWN, event_id + 1)
            except Exception:
                logger.exception("stream failed")
                stats.outcome = "error"
                failure = Event("error", {"code": "internal", "message": "internal error"})
                await self._send_event(send, failure, event_id + 1)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            stats.outcome = "disconnected"  # the client went away between events

    async def _run_to_end(self) -> None:
        try:
            async for extra in self.events:
                logger.warning("event after the end of a stream dropped: %s", extra.name)
        except Exception:
            logger.exception("stream post-processing failed")

    async def _send_event(self, send: Send, event: Event, event_id: int) -> None:
        body = encode(event, event_id)
        self._sending = True
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self._sending = False
        stats = self.stats
        stats.events += 1
        stats.bytes += len(body)
        stats.counts[event.name] = stats.counts.get(event.name, 0) + 1

    async def _watch(self, receive: Receive, send: Send) -> None:
        """Wait on `receive()` for the client to go, waking once a tick to keep the stream
        alive. One task per stream rather than two: an idle stream's memory is mostly its
        tasks, and 5,000 of them per worker is the target.

        Checked once a tick rather than timed per event, so the hot path pays nothing: an
        idle stream is pinged between one and two intervals after its last event, and a
        send stuck behind a client that stopped reading is cut off after `send_timeout`."""
        tick = min(self.ping_seconds, self.send_timeout)
        seen = 0
        idle = stalled = 0.0
        while True:
            try:
                async with asyncio.timeout(tick):
                    message = await receive()
            except TimeoutError:
                pass
            else:
                if message["type"] == "http.disconnect":
                    self.stop("disconnected")
                    return
                continue
            events = self.stats.events
            if events != seen:
                seen, idle, stalled = events, 0.0, 0.0
                continue
            if self._sending:
                stalled += tick
                if stalled >= self.send_timeout:
                    self.stop("slow_client")
                    return
                continue
            idle += tick
            if idle >= self.ping_seconds:
                idle = 0.0
                # A ping can block behind a full buffer as well as an event can.
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await send({"type": "http.response.body", "body": PING, "more_body": True})
                except TimeoutError:
                    self.stop("slow_client")
                    return
