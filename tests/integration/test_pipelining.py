"""The Store's batched commands against a real redis-server: what one loop turn sends goes
in one write on one connection, replies find their own command, and failures stay bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis as sync_redis
from redis.exceptions import ResponseError

from service.redis.pipeline import AutoPipeline
from service.redis.store import Script, Store
from tests.support.latency_proxy import latency_proxy
from tests.support.redis import RedisServer, running_redis

T = TypeVar("T")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = Store(url)
        try:
            return await body(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def _clients(url: str) -> int:
    with sync_redis.Redis.from_url(url) as client:
        info: Any = client.info("clients")
    return int(info["connected_clients"])


def _get(url: str, key: str) -> Any:
    with sync_redis.Redis.from_url(url) as client:
        return client.get(key)


def test_one_loop_turn_goes_in_one_write_on_one_connection(redis: RedisServer) -> None:
    """Through a proxy that delays every write by 50 ms, 200 commands of one loop turn take
    about one delay (plus the connection's own set-up), where 200 round trips would take
    ten seconds: they went together."""
    delay = 0.05

    async def body(store: Store) -> tuple[list[Any], float, int]:
        assert await store.execute("test", "PING", fallback=None) == b"PONG"  # connected
        started = time.monotonic()
        replies = await asyncio.gather(
            *(store.execute("test", "INCR", "counter", fallback=None) for _ in range(200))
        )
        took = time.monotonic() - started
        return replies, took, _clients(redis.url) - 1  # less the one asking

    with latency_proxy(redis.port, delay) as proxy:
        replies, took, connections = _with_store(f"redis://127.0.0.1:{proxy.port}/0", body)
    assert replies == list(range(1, 201))  # each command got its own reply, in order
    assert delay <= took < 3 * delay, took
    assert connections == 1


def test_an_error_reply_fails_only_its_own_command(redis: RedisServer) -> None:
    async def body(store: Store) -> list[Any]:
        await store.execute("test", "SET", "text", "not a number", fallback=None)
        pipeline = store.pipeline
        futures = [
            pipeline.execute("INCR", "text"),
            pipeline.execute("GET", "text"),
            pipeline.execute("INCR", "number"),
        ]
        return await asyncio.gather(*futures, return_exceptions=True)

    wrong, text, number = _with_store(redis.url, body)
    assert isinstance(wrong, ResponseError)
    assert text == b"not a number"
    assert number == 1


def test_a_script_runs_again_after_redis_forgets_it(redis: RedisServer) -> None:
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    async def body(store: Store) -> list[Any]:
        first = await store.run_script("test", script, ["n"], [2], fallback=None)
        await store.execute("test", "SCRIPT", "FLUSH", fallback=None)
        second = await store.run_script("test", script, ["n"], [3], fallback=None)
        third = await store.run_script("test", script, ["n"], [4], fallback=None)
        return [first, second, third]

    assert _with_store(redis.url, body) == [2, 5, 9]


def test_a_frozen_redis_costs_a_command_its_timeout_and_no_more(redis: RedisServer) -> None:
    async def body(store: Store) -> tuple[Any, float, bool]:
        assert await store.execute("test", "PING", fallback=None) == b"PONG"
        redis.freeze()
        try:
            started = time.monotonic()
            reply = await store.execute("test", "PING", fallback="fell back")
            waited = time.monotonic() - started
            return reply, waited, store.available
        finally:
            redis.thaw()

    reply, waited, available = _with_store(redis.url, body)
    assert reply == "fell back"
    assert 0.4 < waited < 1.0
    assert not available  # the next requests skip Redis instead of waiting, but for one


def test_a_reply_that_comes_too_late_is_never_taken_for_the_next_one(
    redis: RedisServer,
) -> None:
    async def body(store: Store) -> tuple[Any, Any]:
        redis.freeze()
        try:
            late = await store.execute("test", "ECHO", "late", fallback="fell back")
        finally:
            redis.thaw()  # Redis now answers the ECHO, to a socket that was dropped
        return late, await store.execute("test", "ECHO", "next", fallback="fell back")

    assert _with_store(redis.url, body) == ("fell back", b"next")


def test_a_restarted_redis_is_used_again_without_a_failed_command(redis: RedisServer) -> None:
    async def body(store: Store) -> list[Any]:
        before = await store.execute("test", "INCR", "n", fallback=None)
        redis.restart()
        during = await store.execute("test", "INCR", "n", fallback="fell back")
        after = await store.execute("test", "INCR", "n", fallback="fell back")
        return [before, during, after]

    before, during, after = _with_store(redis.url, body)
    assert before == 1
    # The idle connection the old server closed reconnects before it is written to, so
    # not even the first command after the restart fails (nothing was saved: a new count).
    assert during == 1
    assert after == 2


def test_a_command_nobody_waits_for_goes_with_the_next_urgent_one(redis: RedisServer) -> None:
    async def body(store: Store) -> tuple[Any, Any]:
        pipeline = store.pipeline
        pipeline.execute("RPUSH", "list", "deferred", urgent=False)
        # Had the deferred command waited for its own timer, this would find the list empty.
        together = await pipeline.execute("LRANGE", "list", 0, -1)
        # Alone, it still goes within moments.
        alone = await pipeline.execute("RPUSH", "list", "alone", urgent=False)
        return together, alone

    together, alone = _with_store(redis.url, body)
    assert together == [b"deferred"]
    assert alone == 2


def test_closing_the_store_sends_what_is_still_queued(redis: RedisServer) -> None:
    async def body(store: Store) -> None:
        store.send("test", ("SET", "last words", "kept"))

    _with_store(redis.url, body)
    assert sync_redis.Redis.from_url(redis.url).get("last words") == b"kept"


def test_commands_wait_for_a_busy_connection_and_a_given_up_one_is_not_sent(
    redis: RedisServer,
) -> None:
    async def body(store: Store) -> list[Any]:
        pipeline = AutoPipeline(store.pool, max_connections=1, timeout=store.timeout)
        try:
            first = pipeline.execute("SET", "first", "1")
            await asyncio.sleep(0)  # its exchange is under way: the one connection is busy
            given_up = pipeline.execute("SET", "given up", "1")
            waiting = pipeline.execute("INCR", "waiting")
            given_up.cancel()  # as a caller's timeout would
            return [await first, await waiting]
        finally:
            await pipeline.aclose()

    assert _with_store(redis.url, body) == [b"OK", 1]
    assert _get(redis.url, "given up") is None


def test_a_closed_store_falls_back_at_once(redis: RedisServer) -> None:
    async def body(store: Store) -> Any:
        await store.pipeline.aclose()
        return await store.execute("test", "PING", fallback="fell back")

    assert _with_store(redis.url, body) == "fell back"


def test_what_send_returns_is_done_only_when_a_resent_batch_is_answered(
    redis: RedisServer,
) -> None:
    """A batch whose connection breaks is sent once more; the future `send` returns must
    cover that second try, or a caller that orders its batches by it (a generation's log,
    relay.py) sends the next before this one has landed."""

    async def body(store: Store) -> Any:
        sent = store.send("test", ("BLPOP", "nothing", 1.0), ("SET", "landed", "yes"))
        assert sent is not None
        # Asked on a connection of the test's own: Redis tells no one when a client blocks.
        blocked = await asyncio.to_thread(_blocked_client, redis.url)
        with sync_redis.Redis.from_url(redis.url) as client:
            client.client_kill_filter(_id=blocked)
        await asyncio.wait([sent], timeout=5)
        assert sent.done()
        return _get(redis.url, "landed")  # the second try's SET, behind its own BLPOP

    assert _with_store(redis.url, body) == b"yes"


def _blocked_client(url: str) -> int:
    """The id of the first client blocked in BLPOP, once there is one."""
    with sync_redis.Redis.from_url(url) as client:
        for _ in range(500):
            for entry in client.client_list():
                if entry["cmd"] == "blpop":
                    return int(entry["id"])
            time.sleep(0.01)
    raise AssertionError("no client blocked")
