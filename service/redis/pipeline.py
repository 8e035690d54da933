"""Commands issued in the same event-loop turn go to Redis together: one write, one read.

A round trip through redis-py's pool costs a worker about 100 µs of CPU on a small VM
(pool bookkeeping, then a write, a wake-up and a read), and a stream makes several: a
Starlette stream of 85 small events costs about 800 µs in all. So the per-stream commands
(stream slot, cache look-up, cache write, slot release) are queued instead and sent once
the current turn of the loop ends, all of them on one connection in one write. A request's
slot and cache look-up share a round trip this way, a finished stream's cache write and
slot release share another, and under load the commands of many streams share each one.

Replies come back in order, so each command's future gets its own reply; an error reply
(a `ResponseError`) fails only its own command. A connection that fails (refused, reset,
silent past `timeout` for its whole exchange, or `abandon`ed by the Store once its probe
finds Redis gone) fails every command of its batch with a `ConnectionError` and reconnects
on its next use; one the other end closed while it sat idle (a Redis restart, an idle
timeout) reconnects before it is used.

An exchange still unanswered after `stall_after` asks `on_stall` (the Store's probe)
whether Redis is there at all: if not, the exchange ends now; if so, it is waited for, and
asked about again after each `stall_after`. One timer per exchange, so a batch of many
commands is watched for the price of one. The connections are
redis-py's own, built from the pool's settings, and kept here: `max_connections` of them
at most; when all are busy, commands wait for the first to come back and then go with it,
less those whose callers gave up meanwhile. Commands are packed by hiredis, in C, when
they are queued, so a bad argument fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError, ResponseError

DEFER_SECONDS = 0.002

Pending = tuple[bytes, asyncio.Future[Any]]


class AutoPipeline:
    def __init__(
        self,
        pool: ConnectionPool,
        max_connections: int,
        timeout: float,
        stall_after: float | None = None,
        on_stall: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.pool = pool
        self.max_connections = max_connections
        self.timeout = timeout
        self.stall_after = stall_after
        self.on_stall = on_stall
        self._watchdogs: dict[asyncio.Task[Any], asyncio.TimerHandle] = {}
        self._judging: set[asyncio.Future[None]] = set()
        # One deadline per exchange, below, instead of redis-py's per write and per reply.
        self._connection_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._idle: list[AbstractConnection] = []
        self._opened: list[AbstractConnection] = []
        self._queue: list[Pending] = []
        self._flush_soon = False
        self._flush_later: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    def execute(self, *command: Any, urgent: bool = True) -> asyncio.Future[Any]:
        """Queue one command; its future resolves to the raw reply (bytes, int, list).

        An urgent command goes when this turn of the loop ends. One that nobody waits on
        (a stream's cache write and slot release) may wait up to `DEFER_SECONDS` for the
        next urgent one, usually the next request's admission, and share its round trip."""
        if self._closed:
            raise ConnectionError("the Redis pipeline is closed")
        packed = pack_command(command)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((packed, future))
        if urgent:
            if not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
        elif not self._flush_soon and self._flush_later is None:
            self._flush_later = loop.call_later(DEFER_SECONDS, self._flush)
        return future

    def _flush(self) -> None:
        self._flush_soon = False
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        if not self._queue:
            return
        if self._idle:
            connection = self._idle.pop()
        elif len(self._opened) < self.max_connections:
            connection = self.pool.connection_class(**self._connection_kwargs)
            self._opened.append(connection)
        else:
            return  # the first connection to come back takes the queue
        task = asyncio.get_running_loop().create_task(self._run(connection))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, connection: AbstractConnection) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                # A caller that timed out while its command waited for a connection has
                # given up on it: it must not take a slot or a lock nobody will release.
                batch = [pending for pending in batch if not pending[1].cancelled()]
                if batch:
                    await self._exchange(connection, batch)
        finally:
            self._idle.append(connection)

    async def _exchange(self, connection: AbstractConnection, batch: list[Pending]) -> None:
        task = asyncio.current_task()
        if self.on_stall is not None and task is not None:
            self._watch(task)
        try:
            if _closed_by_peer(connection):
                await connection.disconnect(nowait=True)  # reconnected below
            async with asyncio.timeout(self.timeout):
                if not connection.is_connected:
                    # `connect()` itself, not the write's implicit connect: a Sentinel-managed
                    # connection asks the Sentinels for the primary only there, and would
                    # otherwise dial its default address (localhost:6379).
                    await connection.connect()  # type: ignore[no-untyped-call]
                await connection.send_packed_command(
                    b"".join([packed for packed, _ in batch]), check_health=False
                )
                for _, future in batch:
                    try:
                        reply = await connection.read_response(timeout=math.inf)
                    except ResponseError as exc:
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    if not future.done():  # a caller that timed out has cancelled it
                        future.set_result(reply)
        except (Exception, asyncio.CancelledError) as exc:
            # Replies may still be on their way: this connection can never be trusted to
            # pair the next reply with the next command again.
            failure = ConnectionError(f"Redis exchange failed: {type(exc).__name__}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            with contextlib.suppress(Exception):  # it is being dropped either way
                await connection.disconnect(nowait=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            watchdog = self._watchdogs.pop(task, None) if task is not None else None
            if watchdog is not None:
                watchdog.cancel()

    def _watch(self, task: asyncio.Task[Any]) -> None:
        assert self.stall_after is not None
        loop = asyncio.get_running_loop()
        self._watchdogs[task] = loop.call_later(self.stall_after, self._stalled, task)

    def _stalled(self, task: asyncio.Task[Any]) -> None:
        if self._watchdogs.pop(task, None) is not None:
            judging = asyncio.ensure_future(self._judge(task))
            self._judging.add(judging)
            judging.add_done_callback(self._judging.discard)

    async def _judge(self, task: asyncio.Task[Any]) -> None:
        assert self.on_stall is not None
        reachable = await self.on_stall()
        if task.done():
            return
        if reachable:
            self._watch(task)  # a busy worker, or a slow command: keep waiting
        else:
            task.cancel()  # its commands fail now; the Store has marked Redis down

    def abandon(self) -> None:
        """Give up on every exchange under way (Redis is gone): their commands fail now
        instead of when `timeout` runs out, and their connections are dropped."""
        for task in list(self._running):
            task.cancel()

    async def aclose(self) -> None:
        """Send what is queued, let the exchanges in flight end (each within `timeout`),
        then close the connections; commands queued after this fail at once."""
        self._flush()
        self._closed = True
        await asyncio.gather(*self._running, return_exceptions=True)
        for connection in self._opened:
            with contextlib.suppress(Exception):  # closing anyway
                await connection.disconnect(nowait=True)


def _closed_by_peer(connection: AbstractConnection) -> bool:
    """Whether the other end closed this connection while it sat idle (redis-py's pool
    checks the same before handing one out)."""
    reader: asyncio.StreamReader | None = getattr(connection, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)
