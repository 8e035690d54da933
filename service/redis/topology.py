"""What every Redis topology gives the Store (redis/store.py): a connection pool (its
settings; `limits` also names its keys through it), the pipelines that carry the commands
(redis/pipeline.py), and a blocking client for the probe's PING. One module per topology
(standalone.py, sentinel.py, cluster.py), chosen once at start-up by `redis.connect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from .pipeline import AutoPipeline

OnStall = Callable[[], Awaitable[bool]]


class Pipelines(Protocol):
    def execute(self, *command: Any, urgent: bool = True) -> asyncio.Future[Any]: ...

    def abandon(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Connected:
    pool: Any  # redis.asyncio.ConnectionPool
    pipeline: Pipelines
    probe: Any  # a blocking client with `ping()` and `close()`


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the Store wants its connections: `settings` for redis-py's connections, at most
    `connections` pipelined ones (per node), an exchange given up after `give_up`, and
    `on_stall` asked after `stall_after` whether Redis is there at all."""

    settings: dict[str, Any]
    connections: int
    give_up: float
    stall_after: float
    on_stall: OnStall


def pipelined(pool: Any, tuning: Tuning) -> Pipelines:
    """One server's pipelines (redis/pipeline.py) over `pool`'s connections, tuned so."""
    return AutoPipeline(
        pool,
        tuning.connections,
        tuning.give_up,
        stall_after=tuning.stall_after,
        on_stall=tuning.on_stall,
    )


def probe_settings(timeout: float) -> dict[str, Any]:
    """The probe's: answer within `timeout`, and once more on a connection a restart broke."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": SyncRetry(NoBackoff(), 1),
        "health_check_interval": 0,
    }
