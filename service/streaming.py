"""How a generation becomes an HTTP response: an `EventStream` reading it, registered with
the worker's drain, counted in the stream metrics when it ends."""

from __future__ import annotations

import asyncio
import time

from .generation import Cursor
from .observability import metrics
from .shutdown import Drain
from .sse import EventStream
from .state import RequestRecord, Services


class Hooks:
    """One per worker, shared by its streams (closures per stream cost each 400 bytes); it
    also keeps the worker's one ticker, which calls every open stream's `tick` once
    `tick_seconds` (pings, and cutting off clients that stopped reading) instead of a
    timer per stream."""

    def __init__(self, drain: Drain, tick_seconds: float) -> None:
        self.drain = drain
        self.tick_seconds = tick_seconds
        self._open: set[EventStream] = set()
        self._ticker: asyncio.Task[None] | None = None

    def opened(self, stream: EventStream) -> None:
        self.drain.add(stream)
        self._open.add(stream)
        metrics.streams_active.inc()
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while self._open:
            await asyncio.sleep(self.tick_seconds)
            for stream in list(self._open):
                stream.tick(self.tick_seconds)

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    def closed(self, stream: EventStream) -> None:
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


def respond(
    services: Services, cursor: Cursor, record: RequestRecord, headers: dict[str, str]
) -> EventStream:
    settings = services.settings
    record.stream_id = cursor.generation.id
    return EventStream(
        cursor,
        ping_seconds=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers=headers,
        hooks=services.hooks,
    )
