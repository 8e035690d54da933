"""A worker's ear for the streams it follows elsewhere: one Redis subscription per worker
(pub/sub, on a connection of its own from the Store's pool), on which each stream's
publisher says it has appended (`keys.stream_news`, a PUBLISH in the batch that carries the
entry: relay.py). A follower reads the stream's log when it hears so, a round trip after the
append, instead of polling it; an idle follower costs nothing but its periodic check.

Notices only hurry a follower along: one that hears nothing still looks every
`relay.CHECK_SECONDS`. So a notice lost (the subscription broken by a Redis restart or a
failover and not yet back, a stream appended to before its subscription took hold) costs a
follower that much latency, never an event. In a Cluster the subscription is on the first
node: a plain PUBLISH reaches every node's subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..observability import metrics
from ..observability.logging import get_logger

log = get_logger("service.notices")

# How long a follower waits for Redis to confirm its subscription before it reads anyway.
CONFIRM_SECONDS = 0.25
# After the subscription broke: how long until it is tried again.
RETRY_SECONDS = 1.0


class Notices:
    def __init__(self, pool: Any) -> None:
        self._pubsub = aioredis.Redis(connection_pool=pool).pubsub()
        self._hearing: dict[bytes, set[asyncio.Event]] = {}
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._lost = False

    async def hear(self, channel: str) -> asyncio.Event:
        """An event set whenever `channel` has news, once Redis has confirmed the
        subscription (or CONFIRM_SECONDS have passed: see the module's docstring)."""
        name = channel.encode()
        news = asyncio.Event()
        hearing = self._hearing.setdefault(name, set())
        hearing.add(news)
        if len(hearing) == 1:
            confirmed = self._confirming[name] = asyncio.get_running_loop().create_future()
            try:
                await self._pubsub.subscribe(name)
            except (RedisError, OSError) as exc:
                self._broken(exc)  # heard again once the listener has it back
            if self._listener is None or self._listener.done():
                self._listener = asyncio.ensure_future(self._listen())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(confirmed), CONFIRM_SECONDS)
        return news

    def forget(self, channel: str, news: asyncio.Event) -> None:
        name = channel.encode()
        hearing = self._hearing.get(name)
        if hearing is None:
            return
        hearing.discard(news)
        if not hearing:
            del self._hearing[name]
            self._confirming.pop(name, None)
            # Sent, not awaited: a follower leaving never waits on Redis.
            unsubscribing = asyncio.ensure_future(self._pubsub.unsubscribe(name))
            unsubscribing.add_done_callback(_consume)

    async def _listen(self) -> None:
        """Until no channel is heard: wake the followers of each channel with news."""
        pubsub = self._pubsub
        while self._hearing:
            try:
                if pubsub.connection is None:  # its first subscription failed: again
                    await pubsub.subscribe(*self._hearing)
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                self._broken(exc)
                await asyncio.sleep(RETRY_SECONDS)  # then read again: it reconnects
                continue
            if self._lost:
                self._lost = False
                log.info("redis notices back")
            if not message:
                continue
            name = message["channel"]
            if message["type"] == "message":
                for news in self._hearing.get(name, ()):
                    news.set()
            elif message["type"] == "subscribe":
                confirmed = self._confirming.pop(name, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    def _broken(self, exc: BaseException) -> None:
        metrics.redis_errors.labels("resume").inc()
        if not self._lost:
            self._lost = True
            log.warning("redis notices lost", error=type(exc).__name__)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
