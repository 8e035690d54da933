"""The single-flight lock: owned by a token, deleted only by its holder, and taken down
soon after its holder dies (its worker's heartbeat stops).

Before, the lock was a bare '1' that lived 120 s and was deleted by anyone: a SIGKILLed
leader left identical requests waiting two minutes, and a leader that outlived its lock
deleted the next leader's."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis as sync_redis

from service.cache import cache_key
from service.cache.in_redis import HEARTBEAT_SECONDS, RedisCache
from service.redis.store import Store
from tests.support.redis import RedisServer, running_redis
from tests.support.service import running_service
from tests.support.sse import Stream, read_stream
from tests.support.tokens import bearer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def test_a_leader_that_outlived_its_lock_does_not_delete_the_next_ones(
    redis: RedisServer,
) -> None:
    key = cache_key("demo", "demo", "outlived")
    lock = f"{key}:lock"
    direct = sync_redis.Redis.from_url(redis.url)

    async def scenario() -> tuple[bool, bool, bytes | None, bytes | None]:
        store = Store(redis.url)
        first, second = RedisCache(300, store), RedisCache(300, store)
        try:
            _, first_leads = await first.lookup(key)
            direct.delete(lock)  # the first leader ran past its lock's life
            _, second_leads = await second.lookup(key)
            held_by_second = direct.get(lock)
            first.finish(key, None, leading=True)  # the first one ends (and fails)
            await asyncio.sleep(0.05)  # its release rides a deferred batch (2 ms)
            return first_leads, second_leads, held_by_second, direct.get(lock)
        finally:
            await first.aclose()
            await second.aclose()
            await store.aclose()

    first_leads, second_leads, held_by_second, after = asyncio.run(scenario())
    assert first_leads and second_leads
    assert held_by_second is not None
    assert after == held_by_second  # still the second leader's


def test_waiters_take_over_within_seconds_of_a_sigkilled_leader(redis: RedisServer) -> None:
    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_DEMO_DELAY_SCALE": "1",  # a 4.5 s generation: the leader dies mid-way
    }
    with running_service(env, workers=1) as leader, running_service(env, workers=1) as waiter:
        waiting = threading.Event()
        follower: list[Stream] = []

        def follow() -> None:
            with (
                httpx.Client(base_url=waiter.url, timeout=60) as http,
                http.stream("GET", "/chat/same-question", headers=bearer()) as response,
            ):
                chunks = response.iter_raw()
                # Times are monotonic clock readings (started=0), comparable with `killed`.
                first = read_stream(response, 0.0, limit=1, chunks=chunks)
                waiting.set()
                rest = read_stream(response, 0.0, chunks=chunks)
                first.events += rest.events
                follower.append(first)

        with httpx.Client(base_url=leader.url, timeout=60) as http:
            request = http.build_request("GET", "/chat/same-question", headers=bearer())
            leading = http.send(request, stream=True)
            chunks = leading.iter_raw()
            names = read_stream(leading, time.monotonic(), limit=2, chunks=chunks).names
            assert names == ["start", "thinking"]  # the leader generates, holding the lock
            thread = threading.Thread(target=follow)
            thread.start()
            assert waiting.wait(30)  # the follower has started and waits on the lock
            for pid in leader.worker_pids():
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            thread.join(60)
            leading.close()
    [stream] = follower
    assert stream.headers["x-cache"] == "MISS"
    assert stream.names[0] == "start" and stream.names[-1] == "done"
    assert stream.text.startswith("You said: same-question.")
    # It waited while the leader lived, and generated itself once the dead leader's lock
    # went silent: within its heartbeat's life and a poll, not the two minutes of the old lock.
    first_step = next(e for e in stream.events if e.name == "thinking")
    assert first_step.at > killed
    assert first_step.at - killed < HEARTBEAT_SECONDS + 1.5
