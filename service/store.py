"""Redis: one client per worker, and the rule for what happens when Redis is away.

Every call goes through `Store.call()`, which bounds it with a timeout (a stopped Redis that
accepts connections and never answers must not hang a request) and, after a failure, skips
Redis for a short pause so that while it is down each request pays nothing, not a timeout.
Callers give the value to fall back to: limits fail open, the cache is skipped. Each
failure and each skip is counted in `chat_redis_errors_total{op}`; the log says when Redis
goes away and when it is back, not once per request.

The commands of a stream's life (rate check, slot, cache look-up; cache write, slot
release) go through `execute`, `run_script` and `send`, which batch whatever one turn of
the event loop issues into one round trip (pipelining.py). The rest (history, lease
renewal, /readyz) use redis-py's client directly, inside `call`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from .observability import metrics
from .observability.logging import get_logger
from .pipelining import AutoPipeline

T = TypeVar("T")
log = get_logger("service.store")

# Loopback Redis answers in well under a millisecond; this bounds the worst case a hung
# Redis can add to one request (measured figures in the README). It is wall time, so it
# also covers a burst that keeps this worker's event loop busy before it reads the reply:
# 0.25 s tripped under 200 simultaneous requests on one worker, switching limits off.
REDIS_TIMEOUT_SECONDS = 0.5
# After a failure, how long requests skip Redis before one of them tries it again.
REDIS_RETRY_SECONDS = 1.0
# Per worker. A check holds a connection for well under a millisecond, so this many serve
# thousands of requests a second; beyond it, calls queue for a free one.
REDIS_MAX_CONNECTIONS = 64
# Per worker, for the hot path's batched commands (see pipelining.py): each carries one
# loop turn's commands for one round trip, so a few are plenty even under heavy load.
PIPELINE_CONNECTIONS = 8


class Script:
    """A Lua script run by its SHA1, with its source sent instead when Redis lacks it
    (after a restart or SCRIPT FLUSH); Redis then keeps it for the next EVALSHA."""

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()  # Redis names it so


class Store:
    def __init__(
        self,
        url: str,
        timeout: float = REDIS_TIMEOUT_SECONDS,
        retry_after: float = REDIS_RETRY_SECONDS,
        max_connections: int = REDIS_MAX_CONNECTIONS,
    ) -> None:
        self.timeout = timeout
        self.retry_after = retry_after
        # A blocking pool: past `max_connections` a call waits (within the timeout) for a
        # free connection. redis-py's default pool raises at once past 100 instead, which
        # under load reads as "Redis is down" and would switch limits off.
        self.pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Our own timeout and pause decide; redis-py's retries would multiply the wait.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=self.pool)
        self.pipeline = AutoPipeline(self.pool, PIPELINE_CONNECTIONS, timeout)
        self._down_until = 0.0
        self._down = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def call(self, op: str, action: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run `action` against Redis within the timeout, or return `fallback`."""
        if not self.available:
            metrics.redis_errors.labels(op).inc()
            return fallback
        try:
            async with asyncio.timeout(self.timeout):
                result = await action()
        except Exception as exc:
            self._failed(op, exc)
            return fallback
        self._succeeded()
        return result

    async def execute(self, op: str, *command: Any, fallback: T) -> Any:
        """One command, sent with whatever else this turn of the event loop sends; its raw
        reply (bytes, int, list), or `fallback`."""
        return await self.call(op, lambda: self.pipeline.execute(*command), fallback)

    async def run_script(
        self, op: str, script: Script, keys: Sequence[str], args: Sequence[Any], fallback: T
    ) -> Any:
        """A Lua script, batched like `execute`."""
        return await self.call(op, lambda: self.eval(script, keys, args), fallback)

    async def eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A Lua script, batched, with no timeout or fallback: for callers inside `call`."""
        try:
            return await self.pipeline.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.pipeline.execute("EVAL", script.source, len(keys), *keys, *args)

    def send(
        self, op: str, *commands: tuple[Any, ...], urgent: bool = False
    ) -> asyncio.Future[Any] | None:
        """Commands nobody has to wait for, batched like `execute` but, unless `urgent`,
        free to wait a moment for the next batch; a failure is counted and logged as usual.
        Returns the last one's future, which is done when all are (they go in one batch,
        answered in order), or None while Redis is paused."""
        if not self.available:
            metrics.redis_errors.labels(op).inc()
            return None
        future = None
        for command in commands:
            try:
                future = self.pipeline.execute(*command, urgent=urgent)
            except Exception as exc:  # closed, or an argument Redis cannot take
                self._failed(op, exc)
                return None
            future.add_done_callback(lambda done: self._sent(op, done))
        return future

    def _sent(self, op: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(op, exc)
        else:
            self._succeeded()

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("redis is back")

    def _failed(self, op: str, exc: BaseException) -> None:
        metrics.redis_errors.labels(op).inc()
        self._down_until = time.monotonic() + self.retry_after
        if not self._down:
            self._down = True
            log.warning("redis unavailable; failing open", op=op, error=type(exc).__name__)

    async def ping(self) -> bool:
        """For /readyz: a real round trip, regardless of the pause after failures."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.ping()
        except Exception as exc:
            self._failed("ping", exc)
            return False
        self._down_until = 0.0
        self._succeeded()
        return True

    async def aclose(self) -> None:
        await self.pipeline.aclose()
        await self.redis.aclose()
        await self.pool.disconnect()
