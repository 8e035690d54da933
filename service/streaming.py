"""How a generation becomes an HTTP response: an `EventStream` reading it, registered with
the worker's drain, counted in the stream metrics when it ends."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from .generation import Cursor
from .observability import metrics
from .shutdown import Drain
from .sse import EventStream
from .state import RequestRecord, Services


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
        on_start=_opened(services.drain),
        on_end=_closed(services.drain, record.started),
    )


def _opened(drain: Drain) -> Callable[[EventStream], None]:
    def opened(stream: EventStream) -> None:
        drain.add(stream)
        metrics.streams_active.inc()

    return opened


def _closed(drain: Drain, started: float) -> Callable[[EventStream], Awaitable[None]]:
    async def closed(stream: EventStream) -> None:
        drain.streams.discard(stream)
        metrics.streams_active.dec()
        stats = stream.stats
        metrics.stream_duration.labels(stats.outcome).observe(time.perf_counter() - started)
        if stats.first_content_at is not None:
            metrics.time_to_first_token.observe(stats.first_content_at - started)
        for name, count in stats.counts.items():
            metrics.stream_events.labels(name).inc(count)

    return closed
