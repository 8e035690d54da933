"""What a generation streams (ResponseCache.source): the stored reply, an identical
request's, or the backend's, by the request's cache ticket; in process, in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from service.cache import CacheTicket, cache_key, replay_of
from service.cache.in_memory import MemoryCache
from service.errors import UpstreamFailed
from service.events import Event, encode, without_id

REPLY = [Event("content", {"text": "x"}), Event("done", {"reason": "complete"})]
OWN = [Event("content", {"text": "mine"}), Event("done", {"reason": "complete"})]


def _blob(events: list[Event]) -> bytes:
    return b"".join(without_id(encode(e, b"s:%d" % n)) for n, e in enumerate(events, 2))


class Backend:
    def __init__(self, fails: bool = False) -> None:
        self.opened = 0
        self.fails = fails

    async def open(self) -> AsyncIterator[Event]:
        self.opened += 1
        if self.fails:
            raise UpstreamFailed(503, "upstream_unavailable", "the model is unreachable")
        return self._reply()

    async def _reply(self) -> AsyncIterator[Event]:
        for event in OWN:
            yield event


async def _drain(source: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in source]


def test_a_hit_replays_the_stored_reply_and_opens_nothing() -> None:
    async def body() -> tuple[list[Event], int, bool]:
        backend = Backend()
        ticket = CacheTicket("k", "HIT", events=REPLY)
        got = await _drain(await MemoryCache(60).source(ticket, backend.open))
        return got, backend.opened, ticket.replayed

    assert asyncio.run(body()) == (REPLY, 0, True)


def test_a_leader_and_a_bypass_open_the_backend() -> None:
    async def body() -> list[int]:
        opened = []
        for ticket in (CacheTicket("k", "MISS", leading=True), CacheTicket("k", "BYPASS")):
            backend = Backend()
            assert await _drain(await MemoryCache(60).source(ticket, backend.open)) == OWN
            opened.append(backend.opened)
        return opened

    assert asyncio.run(body()) == [1, 1]


def test_a_follower_waits_for_its_leader_and_replays_what_it_stored() -> None:
    async def body() -> tuple[list[Event], int, bool]:
        cache, backend = MemoryCache(60), Backend()
        key = cache_key("demo", "demo", "same")
        assert await cache.lookup(key) == (None, True)  # the leader
        assert await cache.lookup(key) == (None, False)  # an identical request, meanwhile
        follower = CacheTicket(key, "MISS", leading=False)
        following = asyncio.ensure_future(_drain(await cache.source(follower, backend.open)))
        await asyncio.sleep(0.01)
        assert not following.done()
        cache.finish(key, _blob(REPLY), leading=True)
        return await asyncio.wait_for(following, 1), backend.opened, follower.replayed

    assert asyncio.run(body()) == (REPLY, 0, True)


def test_a_follower_whose_leader_failed_generates_itself() -> None:
    async def body() -> tuple[list[Event], int]:
        cache, backend = MemoryCache(60), Backend()
        key = cache_key("demo", "demo", "fails")
        await cache.lookup(key)
        follower = CacheTicket(key, "MISS", leading=False)
        following = asyncio.ensure_future(_drain(await cache.source(follower, backend.open)))
        await asyncio.sleep(0.01)
        cache.finish(key, None, leading=True)  # the leader stored nothing
        return await asyncio.wait_for(following, 1), backend.opened

    assert asyncio.run(body()) == (OWN, 1)


def test_a_follower_whose_own_attempt_is_refused_ends_in_that_error() -> None:
    async def body() -> list[Event]:
        cache, backend = MemoryCache(60), Backend(fails=True)
        key = cache_key("demo", "demo", "refused")
        await cache.lookup(key)
        follower = CacheTicket(key, "MISS", leading=False)
        following = asyncio.ensure_future(_drain(await cache.source(follower, backend.open)))
        await asyncio.sleep(0.01)
        cache.finish(key, None, leading=True)
        return await asyncio.wait_for(following, 1)

    [error] = asyncio.run(body())
    assert error == Event(
        "error", {"code": "upstream_unavailable", "message": "the model is unreachable"}
    )


def test_an_entry_is_the_blocks_without_ids_and_reads_back_or_is_a_miss() -> None:
    blob = _blob(REPLY)
    assert b"id:" not in blob
    assert replay_of(blob) == REPLY
    assert replay_of(b"event: done\ndata: {not json\n\n") is None
