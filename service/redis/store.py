"""Redis: one client per worker, and the rule for when Redis counts as down.

Every call goes through `Store.call()`, which returns the caller's fallback when Redis is
down: limits fail open, the cache is skipped. Down means unreachable, decided by what
Redis itself does, never by how busy this worker is:

- A command whose connection the server closed (a Redis restart, an idle timeout) is sent
  once more on a new connection. Only when that fails too (refused, reset) is Redis down.
- A batch of commands with no answer after REDIS_TIMEOUT_SECONDS asks the `Probe`: a PING
  on a connection of its own, in a thread of its own, so that an event loop too busy to
  read its replies (a burst of requests on a full CPU) does not make a healthy Redis look
  dead. If Redis answers the probe, the batch is waited for (up to REDIS_GIVE_UP_SECONDS);
  if it does not, Redis is down, and every exchange still waiting on it is abandoned at
  once. The watching is the pipeline's, one timer per batch (pipeline.py).
- While Redis is down, calls fail open without waiting, except one at a time, which tries
  Redis for real: the first request after Redis is back finds it back, and from then on
  every request is enforced again. `/readyz` asks the probe directly.

Each failure and each skip is counted in `chat_redis_errors_total{op}`; the log says when
Redis goes away and when it is back, not once per request.

Every command goes through `execute`, `run_script`, `eval` or `send`, which batch whatever
one turn of the event loop issues into one round trip (pipeline.py). redis-py's pool
only provides the connections' settings (and `limits`' storage its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisError

from ..observability import metrics
from ..observability.logging import get_logger
from . import connect
from .topology import Pipelines, Tuning

T = TypeVar("T")
log = get_logger("service.store")

# How long a command may go unanswered before the probe is asked whether Redis is there,
# and how long the probe's PING may take. Redis answers in well under a millisecond on a
# LAN; the two together bound what a dead Redis adds to one request before it fails open.
# Neither decides alone: a slow answer on a busy worker only asks the probe.
REDIS_TIMEOUT_SECONDS = 0.25
# A command Redis is reachable for but has not answered after this long fails open alone.
REDIS_GIVE_UP_SECONDS = 5.0
# Per worker. A check holds a connection for well under a millisecond, so this many serve
# thousands of requests a second; beyond it, calls queue for a free one.
REDIS_MAX_CONNECTIONS = 64
# Per worker, for the hot path's batched commands (see pipeline.py): each carries one
# loop turn's commands for one round trip, so a few are plenty even under heavy load.
PIPELINE_CONNECTIONS = 8


class Unreachable(Exception):
    """Redis refused, reset, or did not answer the probe."""


class Probe:
    """Is Redis there? A PING on a connection of its own, run in a thread of its own: the
    answer is read as soon as it arrives, however long this worker's event loop takes to
    get round to its own sockets. Concurrent askers share one PING. (With Sentinel the
    PING goes to the primary the Sentinels name now; with a Cluster, to any node.)"""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="redis-probe")
        self._running: asyncio.Future[bool] | None = None

    async def reachable(self) -> bool:
        if self._running is None:
            loop = asyncio.get_running_loop()
            self._running = loop.run_in_executor(self._thread, self._ping)
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, _: asyncio.Future[bool]) -> None:
        self._running = None

    def _ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (RedisError, OSError):
            return False

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._client.close()


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
        ca_file: str | None = None,
        timeout: float = REDIS_TIMEOUT_SECONDS,
        give_up: float = REDIS_GIVE_UP_SECONDS,
        max_connections: int = REDIS_MAX_CONNECTIONS,
    ) -> None:
        self.timeout = timeout
        self.give_up = give_up
        # A blocking pool: past `max_connections` a call waits for a free connection.
        # redis-py's default pool raises at once past 100 instead, which under load would
        # read as "Redis is down" and switch limits off. Its socket timeout is only a
        # backstop: the probe decides, within `timeout`, whether Redis is there.
        settings: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": give_up,
            "socket_timeout": give_up,
            "socket_connect_timeout": timeout,
            # `call` retries a broken connection itself; redis-py's retries would add more.
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        tuning = Tuning(settings, PIPELINE_CONNECTIONS, give_up, timeout, self._stalled)
        self.mode, connected = connect(url, ca_file, tuning)
        self.pool = connected.pool
        self.pipeline: Pipelines = connected.pipeline
        self.probe = Probe(connected.probe)
        self._down = False
        self._trying = False  # while down: one call at a time tries Redis for real

    @property
    def available(self) -> bool:
        return not self._down

    async def call(self, op: str, action: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run `action` against Redis, or return `fallback` when Redis is down."""
        trial = False
        if self._down:
            if self._trying:
                metrics.redis_errors.labels(op).inc()
                return fallback
            self._trying = trial = True
        try:
            result = await self._answer(action)
        except Unreachable as exc:
            self._lost(op, exc.__cause__ or exc)
            return fallback
        except (RedisError, OSError) as exc:
            # Redis is there, but this command failed (an error reply): it fails open alone.
            metrics.redis_errors.labels(op).inc()
            log.warning("redis command failed", op=op, error=type(exc).__name__)
            return fallback
        finally:
            if trial:
                self._trying = False
        self._back()
        return result

    async def _answer(self, action: Callable[[], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            try:
                return await action()
            except (ConnectionError, ConnectionResetError, BrokenPipeError) as exc:
                if attempt == 2 or self._down:
                    raise Unreachable("no connection") from exc
                # A connection the server closed while it sat idle: once more, on a new one.
        raise AssertionError("unreachable")

    async def _stalled(self) -> bool:
        """A batch has waited `timeout` for its answer: is Redis there at all?"""
        if await self.probe.reachable():
            return True
        self.lost_by_probe()
        return False

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
    ) -> asyncio.Future[None] | None:
        """Commands nobody has to wait for, batched like `execute` but, unless `urgent`,
        free to wait a moment for the next batch. A batch that fails on a broken connection
        is sent once more; a failure is counted and logged as usual. Returns a future that
        is done when all are answered, a second try included (they go in one batch,
        answered in order, so the last one's answer says so), or None while Redis is down."""
        if self._down:
            metrics.redis_errors.labels(op).inc()
            return None
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        last = len(commands) - 1
        for n, command in enumerate(commands):
            try:
                future = self.pipeline.execute(*command, urgent=urgent)
            except Exception as exc:  # closed, or an argument Redis cannot take
                metrics.redis_errors.labels(op).inc()
                log.warning("redis command not sent", op=op, error=type(exc).__name__)
                return None
            done = finished if n == last else None
            future.add_done_callback(functools.partial(self._sent, op, command, urgent, done))
        if not commands:
            _finish(finished)
        return finished

    def _sent(
        self,
        op: str,
        command: tuple[Any, ...],
        urgent: bool,
        finished: asyncio.Future[None] | None,
        future: asyncio.Future[Any],
    ) -> None:
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, ConnectionError) and not self._down:
            with contextlib.suppress(Exception):  # closed meanwhile: counted below
                retried = self.pipeline.execute(*command, urgent=urgent)
                retried.add_done_callback(lambda done: self._resent(op, finished, done))
                return
        if exc is not None:
            metrics.redis_errors.labels(op).inc()
        _finish(finished)

    def _resent(
        self, op: str, finished: asyncio.Future[None] | None, future: asyncio.Future[Any]
    ) -> None:
        if not future.cancelled() and future.exception() is not None:
            metrics.redis_errors.labels(op).inc()
        _finish(finished)

    def lost_by_probe(self) -> None:
        """The probe got no answer: Redis is down for every call, and whatever is waiting
        on it now waits for nothing."""
        self._lost("probe", Unreachable("no answer to the probe"))
        self.pipeline.abandon()

    def _back(self) -> None:
        if self._down:
            self._down = False
            log.info("redis is back")

    def _lost(self, op: str, exc: BaseException) -> None:
        metrics.redis_errors.labels(op).inc()
        if not self._down:
            self._down = True
            log.warning("redis unavailable; failing open", op=op, error=type(exc).__name__)

    async def ping(self) -> bool:
        """For /readyz: the probe's answer, which also ends or starts an outage."""
        if await self.probe.reachable():
            self._back()
            return True
        self._lost("ping", Unreachable("no answer to the probe"))
        return False

    async def aclose(self) -> None:
        await self.pipeline.aclose()
        await self.pool.disconnect()
        self.probe.close()


def _finish(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
