"""How soon a reader on another worker sees an event: a generation published to a real
Redis by one Relay and followed through another, as two workers would (service/redis/
relay.py), in this process. Each event's time from its append to the follower's read, and
how many times an idle follower reads the log in a quiet second.

    .venv/bin/python -m bench.follower        (also part of `python -m bench`)
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import redis as sync_redis

from service.events import Event
from service.generation import FOLLOWING, Generation
from service.log import Log
from service.redis.relay import Relay
from service.redis.store import Store
from tests.support.redis import running_redis

EVENTS = 200
PACE_SECONDS = 0.02  # 50 events a second, a fast model's pace
QUIET_SECONDS = 2.0


def follower_latency(redis_url: str) -> dict[str, float]:
    return asyncio.run(_measure(redis_url))


async def _measure(url: str) -> dict[str, float]:
    stores = Store(url), Store(url)
    publisher, follower = Relay(stores[0], window=30), Relay(stores[1], window=30)
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    async def source() -> AsyncIterator[Event]:
        while (event := await queue.get()) is not None:
            yield event

    stream_id = secrets.token_urlsafe(16)
    generation = Generation(stream_id, "bench", source(), FOLLOWING, publisher, Log())
    publisher.started(generation)
    generation.begin()
    generation.start(lambda _: None)
    try:
        followed = None
        while followed is None:  # until its first publish has landed
            followed = await follower.follow(stream_id, "bench", 0)
            await asyncio.sleep(0.005)
        source_elsewhere: Any = followed.source
        latencies = []
        for n in range(EVENTS):
            began = time.perf_counter()
            queue.put_nowait(Event("content", {"text": str(n)}))
            while (await source_elsewhere.__anext__()).name != "content":
                pass  # the `start` event, when the history did not hold it yet
            latencies.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(PACE_SECONDS)
        waiting = asyncio.ensure_future(source_elsewhere.__anext__())  # as its reader does
        with sync_redis.Redis.from_url(url) as client:
            before = _xrange_calls(client)
            await asyncio.sleep(QUIET_SECONDS)
            idle_reads = (_xrange_calls(client) - before) / QUIET_SECONDS
        queue.put_nowait(Event("done", {"reason": "complete"}))
        await waiting
        await source_elsewhere.aclose()
        queue.put_nowait(None)
        await generation.wait_ended()
        publisher.ended(generation)
    finally:
        for relay in (publisher, follower):
            await relay.aclose()
        for store in stores:
            await store.aclose()
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "idle_reads_per_s": idle_reads,
    }


def _xrange_calls(client: sync_redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


if __name__ == "__main__":
    with running_redis() as redis:
        print(json.dumps(follower_latency(redis.url), indent=2))
