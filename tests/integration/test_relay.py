"""A generation's log in a real redis-server holds every event once, in order, whatever
the Store's connections do meanwhile."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as sync_redis

from service.events import Event
from service.generation import FOLLOWING, Generation
from service.generations import Followed
from service.log import Cursor, Log
from service.redis import keys
from service.redis import relay as relay_module
from service.redis.relay import Relay
from service.redis.store import Store
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


class Worker:
    """What one worker has of Redis: a Store, and a Relay on it."""

    def __init__(self, url: str, window: float = 30) -> None:
        self.store = Store(url)
        self.relay = Relay(self.store, window=window)

    async def aclose(self) -> None:
        await self.relay.aclose()
        await self.store.aclose()


class Fed(Worker):
    """A worker, and one generation whose events the test feeds (`feed`; None ends it),
    tracked by its relay once `start`ed."""

    def __init__(self, url: str, stream_id: str, user: str, window: float) -> None:
        super().__init__(url, window)
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.generation = Generation(
            stream_id, user, self._source(), FOLLOWING, self.relay, Log(1 << 20)
        )
        self.log_key, self.meta_key, _ = keys.stream(user, stream_id)

    async def _source(self) -> AsyncIterator[Event]:
        while (event := await self.events.get()) is not None:
            yield event

    def start(self) -> None:
        self.relay.started(self.generation)
        self.generation.begin()
        self.generation.start(lambda _: None)

    def published(self) -> int:
        return self.relay._published.get(self.generation, -1)

    def feed(self, event: Event | None) -> None:
        self.events.put_nowait(event)

    async def read_here_and_feed(self, count: int) -> Cursor:
        """Start it with a reader on its own worker (its client), and feed `count` content
        events; back once they are in its log. Returns the reader."""
        cursor = self.generation.log.attach(0)
        self.start()

        async def started() -> bool:
            return self.published() == 1

        await _until(started)
        for n in range(count):
            self.feed(Event("content", {"text": str(n)}))

        async def appended() -> bool:
            return self.generation.log.last_seq == count + 1

        await _until(appended)
        return cursor

    async def end(self) -> None:
        """End the generation, and wait until its end is in Redis."""
        self.feed(None)
        await self.generation.wait_ended()
        self.relay.ended(self.generation)

        async def ended() -> bool:
            state = await self.store.execute("test", "HGET", self.meta_key, "state", fallback=None)
            return state == b"ended"

        await _until(ended)


def test_a_held_up_batch_is_not_overtaken_by_the_next_one(redis: RedisServer) -> None:
    """The batch that carries a generation's first events is held up on its connection (a
    blocked command ahead of it); the next events, appended meanwhile, must not reach the
    log first on another connection, or Redis refuses the held-up entry (its id is no
    longer the newest) and a resume elsewhere finds a hole. CI saw one on a Cluster:
    events 36, 46 and 77 of a resumed reply never arrived."""

    async def body() -> tuple[list[bytes], Followed | None]:
        fed = Fed(redis.url, "held", "alice", window=30)
        store, generation = fed.store, fed.generation
        try:
            # Goes in the same batch as the generation's first entry, and holds it up.
            store.send("test", ("BLPOP", "release", 10))
            fed.start()

            async def queued() -> bool:
                return fed.published() == 1

            await _until(queued)
            store.send("test", ("PING",), urgent=True)  # the batch goes now

            async def blocked() -> bool:
                info = await store.execute("test", "INFO", "clients", fallback=b"")
                return b"blocked_clients:1\r" in info

            await _until(blocked)
            for n in range(20):
                fed.feed(Event("content", {"text": str(n)}))

            async def appended() -> bool:
                return generation.log.last_seq == 21

            await _until(appended)
            # Whatever the relay queued meanwhile goes with this, on another connection.
            assert await store.execute("test", "PING", fallback=None) == b"PONG"
            await store.execute("test", "RPUSH", "release", 1, fallback=None)
            await fed.end()
            mirror = await fed.relay.follow("held", "alice", 0)
            if mirror is not None:
                await mirror.source.aclose()  # type: ignore[attr-defined]
            return [entry.wire for entry in generation.log.entries], mirror
        finally:
            await fed.aclose()

    wires, mirror = asyncio.run(body())
    assert len(wires) == 21  # start and 20 content events
    assert mirror is not None  # the log starts at the first event
    assert [wire for _, wire in mirror.history] == wires


def test_a_long_generations_keys_outlive_their_first_lease_and_end_with_the_window(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys of a running generation live RUNNING_TTL (3 s here), renewed while it runs; a
    generation quiet for longer than that is still there, and its end leaves them the
    resume window (1 s here)."""
    monkeypatch.setattr(relay_module, "RUNNING_TTL", 3)

    async def body() -> tuple[int, int]:
        fed = Fed(redis.url, "long", "bob", window=1)
        try:
            fed.start()
            await asyncio.sleep(4.5)  # the quiet itself is what is tested: past 3 s
            running = await fed.store.execute("test", "PTTL", fed.log_key, fallback=None)
            await fed.end()
            left = await fed.store.execute("test", "PTTL", fed.log_key, fallback=None)
            return running, left
        finally:
            await fed.aclose()

    running, left = asyncio.run(body())
    assert 0 < running <= 3000  # renewed: alive 4.5 s after it began
    assert 0 < left <= 1000  # the window, not a renewal's 3 s


def test_a_generations_end_lands_before_the_store_closes(redis: RedisServer) -> None:
    """At shutdown a generation's end (here, its last events and `state ended`) may wait
    behind its previous publish; closing the relay lets it land before the Store closes,
    or a resume on another pod would see a generation still running with no one to run it."""

    async def body() -> None:
        fed = Fed(redis.url, "closing", "carol", window=30)
        store, generation = fed.store, fed.generation
        try:
            store.send("test", ("BLPOP", "nothing", 0.3))  # holds up the first publish
            fed.start()

            async def queued() -> bool:
                return fed.published() == 1

            await _until(queued)
            store.send("test", ("PING",), urgent=True)  # the batch goes now
            fed.feed(Event("content", {"text": "last words"}))
            fed.feed(None)
            await generation.wait_ended()
            fed.relay.ended(generation)  # behind the held-up publish
        finally:
            await fed.aclose()

    asyncio.run(body())
    _, meta, _ = keys.stream("carol", "closing")
    with sync_redis.Redis.from_url(redis.url) as client:
        assert client.hget(meta, "state") == b"ended"
        assert client.xlen(keys.stream("carol", "closing")[0]) == 2  # start, then the rest


def _xrange_calls(client: sync_redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


def test_a_follower_hears_of_each_entry_and_reads_nothing_while_none_comes(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower on another worker reads the log when the stream's channel announces an
    entry: with its own look at the stream only every 30 s here, each event fed still
    reaches it, and so does the end (one without a last event, as a source that just
    stops: `interrupted`). While nothing is appended it reads nothing (it used to read ten
    times a second)."""
    monkeypatch.setattr(relay_module, "CHECK_SECONDS", 30)

    async def body() -> tuple[list[str], int]:
        fed = Fed(redis.url, "heard", "dave", window=30)
        other = Worker(redis.url)
        try:
            fed.start()

            async def started() -> bool:
                return fed.published() == 1

            await _until(started)
            followed = await other.relay.follow("heard", "dave", 1)
            assert followed is not None
            source: Any = followed.source
            names = []
            with sync_redis.Redis.from_url(redis.url) as client:
                for n in range(3):
                    fed.feed(Event("content", {"text": str(n)}))
                    names.append((await asyncio.wait_for(source.__anext__(), 5)).name)
                waiting = asyncio.ensure_future(source.__anext__())  # as its reader does
                before = _xrange_calls(client)
                await asyncio.sleep(1.0)  # the quiet itself is what is tested
                quiet_reads = _xrange_calls(client) - before
            await fed.end()
            names.append((await asyncio.wait_for(waiting, 5)).name)
            await source.aclose()
            return names, quiet_reads
        finally:
            await other.aclose()
            await fed.aclose()

    names, quiet_reads = asyncio.run(body())
    assert names == ["content", "content", "content", "error"]
    assert quiet_reads == 0


def test_a_generation_read_here_is_published_now_and_then_and_at_once_when_its_reader_leaves(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While its client reads it on its own worker and nobody follows it elsewhere, a
    generation's events wait PUBLISH_SECONDS (30 s here) and go together, not a publish
    each. When its reader leaves they go at once, and so does all it appends while nobody
    reads it here: a resume on another worker finds them."""
    monkeypatch.setattr(relay_module, "PUBLISH_SECONDS", 30)

    async def body() -> tuple[int, int, int, int]:
        fed = Fed(redis.url, "read-here", "erin", window=30)
        generation = fed.generation
        try:
            cursor = await fed.read_here_and_feed(10)
            held_back = fed.published()
            in_redis = await fed.store.execute("test", "XLEN", fed.log_key, fallback=None)
            generation.log.detach(cursor)
            fed.relay.detached(generation)

            async def published() -> bool:
                return fed.published() == 11

            await _until(published)
            fed.feed(Event("content", {"text": "read by nobody here"}))

            async def published_again() -> bool:
                return fed.published() == 12

            await _until(published_again)
            await fed.end()
            entries = await fed.store.execute("test", "XLEN", fed.log_key, fallback=None)
            followed = await fed.relay.follow("read-here", "erin", 0)
            assert followed is not None
            await followed.source.aclose()  # type: ignore[attr-defined]
            return held_back, in_redis, entries, len(followed.history)
        finally:
            await fed.aclose()

    held_back, in_redis, entries, events_in_redis = asyncio.run(body())
    assert (held_back, in_redis) == (1, 1)  # only `start`: the ten wait
    assert entries <= 4  # start; the ten at once; the one; the end
    assert events_in_redis == 12  # start, 10 + 1 content (the source just stops)


def test_an_ended_generation_is_not_kept_by_a_timer_to_publish_it(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events read here wait PUBLISH_SECONDS; when the end publishes them sooner, the timer
    goes too, or it would keep the ended generation (and its log) alive until it fires: a
    worker making 600 short replies a second held 1,200 of them."""
    monkeypatch.setattr(relay_module, "PUBLISH_SECONDS", 30)

    async def body() -> list[asyncio.TimerHandle]:
        fed = Fed(redis.url, "timer", "hana", window=30)
        try:
            await fed.read_here_and_feed(3)  # its events now wait for their timer
            await fed.end()
            generation = fed.generation
            return [
                handle
                for args in gc.get_referrers(generation)
                if type(args) is tuple
                for handle in gc.get_referrers(args)
                if isinstance(handle, asyncio.TimerHandle) and not handle.cancelled()
            ]
        finally:
            await fed.aclose()

    assert asyncio.run(body()) == []


def test_a_resume_elsewhere_that_saw_more_than_the_log_holds_gets_the_rest(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that read ten events on the worker running its generation resumes on
    another before that worker has published them (they wait PUBLISH_SECONDS while its
    reader is there): the other worker asks for them and serves the rest, not a 404."""
    monkeypatch.setattr(relay_module, "PUBLISH_SECONDS", 30)
    monkeypatch.setattr(relay_module, "HURRY_SECONDS", 10.0)

    async def body() -> tuple[int, list[str]]:
        fed = Fed(redis.url, "ahead", "frank", window=30)
        other = Worker(redis.url)
        try:
            await fed.read_here_and_feed(10)  # its client, reading it there
            published_then = fed.published()
            followed = await other.relay.follow("ahead", "frank", 11)  # its Last-Event-ID: 11
            assert followed is not None
            source: Any = followed.source
            fed.feed(Event("content", {"text": "next"}))
            names = [(await asyncio.wait_for(source.__anext__(), 10)).name]
            await source.aclose()
            await fed.end()
            return published_then, names
        finally:
            await other.aclose()
            await fed.aclose()

    published_then, names = asyncio.run(body())
    assert published_then == 1  # the ten were not in Redis when the resume came
    assert names == ["content"]


def test_a_resume_elsewhere_ahead_of_the_log_of_a_dead_worker_is_told_it_was_interrupted(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker running a generation dies before publishing the ten events its client
    saw there: the client's resume on another worker is not a 404 (the events it names
    are nowhere) but `error interrupted`, numbered after the last event it saw."""
    monkeypatch.setattr(relay_module, "PUBLISH_SECONDS", 30)

    async def body() -> tuple[int, int, list[tuple[str, str]]]:
        fed = Fed(redis.url, "died", "gina", window=30)
        other = Worker(redis.url)
        try:
            await fed.read_here_and_feed(10)
            assert fed.relay._chores is not None
            fed.relay._chores.cancel()  # the worker dies: no heartbeat, no inbox
            alive = keys.worker_alive(fed.relay.worker)
            await fed.store.execute("test", "DEL", alive, fallback=None)
            followed = await other.relay.follow("died", "gina", 11)  # its Last-Event-ID: 11
            assert followed is not None
            source: Any = followed.source
            events_ = [event async for event in source]
            return followed.first, fed.published(), [(e.name, e.data["code"]) for e in events_]
        finally:
            await other.aclose()
            await fed.aclose()

    first, published, events_ = asyncio.run(body())
    assert published == 1  # only `start` reached Redis
    assert first == 12
    assert events_ == [("error", "interrupted")]
