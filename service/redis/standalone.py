"""One Redis server, plain (`redis://`, `unix://`) or over TLS (`rediss://`, with
CHAT_REDIS_CA_FILE for a private CA; the server's name is checked)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from .topology import Connected, Tuning, pipelined, probe_settings
from .urls import RedisTarget, tls_options


def connect(target: RedisTarget, ca_file: str | None, tuning: Tuning) -> Connected:
    tls = tls_options(target, ca_file)
    # A blocking pool: past its size a call waits for a free connection, where redis-py's
    # default pool raises at once, which under load would read as "Redis is down".
    pool = aioredis.BlockingConnectionPool.from_url(target.url, **tuning.settings, **tls)
    pipeline = pipelined(pool, tuning)
    timeout = tuning.stall_after
    probe = redis.Redis.from_url(target.url, **probe_settings(timeout), **tls)
    return Connected(pool, pipeline, probe)
