"""A primary that Sentinels guard (`redis+sentinel://`): redis-py's Sentinel-managed
connections, which ask the Sentinels for the primary whenever they connect, so after a
failover the first new connection reaches the promoted one. The URL's password is the
primary's; the Sentinels are asked without one."""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.sentinel import Sentinel as SyncSentinel

from .topology import Connected, Tuning, pipelined, probe_settings
from .urls import RedisTarget


def connect(target: RedisTarget, ca_file: str | None, tuning: Tuning) -> Connected:
    settings = {k: v for k, v in tuning.settings.items() if k != "timeout"}
    settings.update(password=target.password, username=target.username)
    asking = {k: v for k, v in settings.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=asking)
    pool: Any = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        target.service, sentinel, db=target.db, **settings
    )
    pipeline = pipelined(pool, tuning)
    timeout = tuning.stall_after
    probing = probe_settings(timeout)
    sentinels = SyncSentinel(
        list(target.hosts),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    auth: dict[str, Any] = {"password": target.password, "username": target.username}
    probe = sentinels.master_for(target.service, db=target.db, **auth, **probing)
    return Connected(pool, pipeline, probe)
