"""A generation's log in a real redis-server holds every event once, in order, whatever
the Store's connections do meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from service import relay as relay_module
from service.events import Event
from service.generation import Generation
from service.relay import Mirror, Relay, _keys, _NoFinisher
from service.store import Store
from tests.support.redis import RedisServer, running_redis


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


async def _until(condition: Any, tries: int = 500) -> None:
    """Await a condition that Redis reports (it tells no one when it changes), checked
    every 10 ms for at most `tries` times."""
    for _ in range(tries):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {condition.__name__}")


def test_a_held_up_batch_is_not_overtaken_by_the_next_one(redis: RedisServer) -> None:
    """The batch that carries a generation's first events is held up on its connection (a
    blocked command ahead of it); the next events, appended meanwhile, must not reach the
    log first on another connection, or Redis refuses the held-up entry (its id is no
    longer the newest) and a resume elsewhere finds a hole. CI saw one on a Cluster:
    events 36, 46 and 77 of a resumed reply never arrived."""

    async def body() -> tuple[list[bytes], Mirror | None]:
        store = Store(redis.url)
        relay = Relay(store, window=30, max_bytes=1 << 20)
        events: asyncio.Queue[Event | None] = asyncio.Queue()

        async def source() -> AsyncIterator[Event]:
            while (event := await events.get()) is not None:
                yield event

        generation = Generation("held", "alice", source(), _NoFinisher())
        try:
            # Goes in the same batch as the generation's first entry, and holds it up.
            store.send("test", ("BLPOP", "release", 10))
            relay.track(generation)
            generation.start()

            async def queued() -> bool:
                return generation.published == 1

            await _until(queued)
            store.send("test", ("PING",), urgent=True)  # the batch goes now

            async def blocked() -> bool:
                info = await store.execute("test", "INFO", "clients", fallback=b"")
                return b"blocked_clients:1\r" in info

            await _until(blocked)
            for n in range(20):
                events.put_nowait(Event("content", {"text": str(n)}))

            async def appended() -> bool:
                return generation.last_seq == 21

            await _until(appended)
            # Whatever the relay queued meanwhile goes with this, on another connection.
            assert await store.execute("test", "PING", fallback=None) == b"PONG"
            await store.execute("test", "RPUSH", "release", 1, fallback=None)
            events.put_nowait(None)
            await generation.wait_ended()
            relay.ended(generation)
            _, meta, _ = _keys("held", "alice")

            async def published() -> bool:
                state = await store.execute("test", "HGET", meta, "state", fallback=None)
                return state == b"ended"

            await _until(published)
            mirror = await relay.mirror("held", "alice", 0)
            return [entry.wire for entry in generation.entries], mirror
        finally:
            await relay.aclose()
            await store.aclose()

    wires, mirror = asyncio.run(body())
    assert len(wires) == 21  # start and 20 content events
    assert mirror is not None  # the log starts at the first event
    assert [entry.wire for entry in mirror.entries] == wires


def test_a_long_generations_keys_outlive_their_first_lease_and_end_with_the_window(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys of a running generation live RUNNING_TTL (3 s here), renewed while it runs; a
    generation quiet for longer than that is still there, and its end leaves them the
    resume window (1 s here)."""
    monkeypatch.setattr(relay_module, "RUNNING_TTL", 3)

    async def body() -> tuple[int, int]:
        store = Store(redis.url)
        relay = Relay(store, window=1, max_bytes=1 << 20)
        events: asyncio.Queue[Event | None] = asyncio.Queue()

        async def source() -> AsyncIterator[Event]:
            while (event := await events.get()) is not None:
                yield event

        generation = Generation("long", "bob", source(), _NoFinisher())
        log_key, meta, _ = _keys("long", "bob")
        try:
            relay.track(generation)
            generation.start()
            await asyncio.sleep(4.5)  # the quiet itself is what is tested: past 3 s
            running = await store.execute("test", "PTTL", log_key, fallback=None)
            events.put_nowait(None)
            await generation.wait_ended()
            relay.ended(generation)

            async def ended() -> bool:
                state = await store.execute("test", "HGET", meta, "state", fallback=None)
                return state == b"ended"

            await _until(ended)
            left = await store.execute("test", "PTTL", log_key, fallback=None)
            return running, left
        finally:
            await relay.aclose()
            await store.aclose()

    running, left = asyncio.run(body())
    assert 0 < running <= 3000  # renewed: alive 4.5 s after it began
    assert 0 < left <= 1000  # the window, not a renewal's 3 s
