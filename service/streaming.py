"""How a generation becomes an HTTP response: an `EventStream` reading it, registered with
the worker's drain, counted in the stream metrics when it ends; and how a client comes
back to one (`resume`) or stops it (`stop`)."""

from __future__ import annotations

import asyncio
import re
import time

from .errors import NotFoundError, TooManyRequests
from .generation import Crowded, Cursor
from .limits import rate_key, resume_key
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


# A reader leaves when its client does; there is no better moment to name.
READERS_RETRY_AFTER = 5
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{22}")
LAST_EVENT_ID = re.compile(r"([A-Za-z0-9_-]{22}):([0-9]{1,9})")
NOT_FOUND = "stream not found"


def check_stream_id(value: str) -> None:
    """404, as for any unknown stream, unless `value` has a stream id's form."""
    if not STREAM_ID.fullmatch(value):
        metrics.stream_resumes.labels("not_found").inc()
        raise NotFoundError(NOT_FOUND)


def respond(
    services: Services, cursor: Cursor, record: RequestRecord, headers: dict[str, str]
) -> EventStream:
    settings = services.settings
    record.stream_id = cursor.generation.id
    return EventStream(
        cursor,
        ping_seconds=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers={**headers, "X-Stream-ID": cursor.generation.id},
        hooks=services.hooks,
    )


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """`<stream>:<n>` as the events' ids are written; None for anything else."""
    match = LAST_EVENT_ID.fullmatch(value.strip())
    return (match.group(1), int(match.group(2))) if match else None


async def resume(
    services: Services, record: RequestRecord, user: str, stream_id: str, after: int
) -> EventStream:
    """The events of `user`'s stream after entry `after`, then the live rest. Spends no rate
    or token budget and takes no stream slot: it starts nothing. 404, the same in every
    case, for a stream unknown, expired, not retained from there, or another user's."""
    await _spend_resume_budget(services, user)
    try:
        cursor = await services.generations.resume(stream_id, user, after)
    except Crowded:
        metrics.rate_limited.labels("readers").inc()
        raise TooManyRequests(
            "this stream has as many readers as it may", READERS_RETRY_AFTER
        ) from None
    if cursor is None:
        metrics.stream_resumes.labels("not_found").inc()
        raise NotFoundError(NOT_FOUND)
    metrics.stream_resumes.labels("resumed").inc()
    record.resumed = True
    budgets = services.budgets
    if budgets.enabled:
        rate, standing = await asyncio.gather(
            services.rate_limits.peek(rate_key(user)), budgets.standing(user)
        )
        headers = rate.headers()
        budgets.add_headers(headers, standing)
    else:
        headers = (await services.rate_limits.peek(rate_key(user))).headers()
    headers["X-Cache"] = cursor.generation.cache_mode
    return respond(services, cursor, record, headers)


async def _spend_resume_budget(services: Services, user: str) -> None:
    """Every resume spends one from the user's CHAT_RESUME_RATE_LIMIT, found or not: each
    re-reads and re-sends up to CHAT_RESUME_MAX_BYTES."""
    limits, key = services.resume_limits, resume_key(user)
    rate = limits.known_refusal(key) or await limits.hit(key)
    if not rate.allowed:
        metrics.rate_limited.labels("resume").inc()
        raise TooManyRequests("too many resumes", rate.reset_seconds, rate.headers("resumes"))


async def resume_from_header(
    services: Services, record: RequestRecord, user: str, last_event_id: str
) -> EventStream:
    """A chat request that carries a `Last-Event-ID` (EventSource-style clients reconnect
    so): it resumes that stream instead of starting another, or is a 404."""
    parsed = parse_last_event_id(last_event_id)
    if parsed is None:
        metrics.stream_resumes.labels("not_found").inc()
        raise NotFoundError(NOT_FOUND)
    return await resume(services, record, user, *parsed)


async def stop(services: Services, user: str, stream_id: str) -> None:
    """Stop `user`'s generation wherever it runs; 404 if there is none."""
    if not await services.generations.stop(stream_id, user):
        raise NotFoundError(NOT_FOUND)
