"""Graceful shutdown of open streams, per worker process.

On SIGTERM uvicorn stops accepting connections and then waits for every open response to
finish, without limit and without telling the application. The worker class calls
`notify_shutdown()` from its signal handler; each app's `Drain` then marks itself draining
(so `/readyz` fails and load balancers stop sending) and, once the graceful period is over,
ends every stream still open with the contract's `shutdown` error event so clients can retry.
A stream that begins after that (its request was already on its way) ends the same way at
once, instead of running until uvicorn cancels it without a word.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Protocol

logger = logging.getLogger("service.shutdown")


class Stoppable(Protocol):
    def stop(self, reason: str) -> None: ...


class Running(Protocol):
    """The worker's generations (generations.Generations), as far as the drain cares."""

    def all(self) -> Iterable[Stoppable]: ...


class Drain:
    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.draining = False
        self.over = False  # the graceful period has ended
        self._over = asyncio.Event()
        self.streams: set[Stoppable] = set()
        self.generations: Running | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        _drains.add(self)

    def unbind(self) -> None:
        _drains.discard(self)

    def begin(self) -> None:
        """Start draining; safe to call from a signal handler (it only schedules work)."""
        if self._loop is not None and not self.draining:
            self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self.draining:
            return
        self.draining = True
        logger.info(
            "draining open streams",
            extra={"streams": len(self.streams), "grace_s": self.grace_seconds},
        )
        assert self._loop is not None
        self._loop.call_later(self.grace_seconds, self._end_streams)

    async def until_over(self, work: Awaitable[None]) -> None:
        """Wait for `work`, but not past the end of the graceful period."""
        task = asyncio.ensure_future(work)
        over = asyncio.ensure_future(self._over.wait())
        await asyncio.wait({task, over}, return_when=asyncio.FIRST_COMPLETED)
        over.cancel()
        if not task.done():
            task.cancel()

    def add(self, stream: Stoppable) -> None:
        self.streams.add(stream)
        if self.over:
            stream.stop("shutdown")

    def _end_streams(self) -> None:
        self.over = True
        self._over.set()
        log = logger.warning if self.streams else logger.info
        log("graceful period over; ending open streams", extra={"streams": len(self.streams)})
        if self.generations is not None:
            for generation in self.generations.all():
                generation.stop("shutdown")
        for stream in list(self.streams):
            stream.stop("shutdown")


_drains: set[Drain] = set()


def notify_shutdown() -> None:
    for drain in list(_drains):
        drain.begin()
