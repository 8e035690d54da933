"""A generation's outcomes, and how `Generations` treats it when its readers come and go
(service/generation.py), in process, with the `Local` twin (no Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service import events
from service.backends import BackendError
from service.events import Event
from service.generation import FOLLOWING, Generation
from service.generations import Crowded, Generations, Local
from service.log import Log


async def _reply(*names: str, pause: float = 0.0) -> AsyncIterator[Event]:
    for name in names:
        if pause:
            await asyncio.sleep(pause)
        data = {"reason": "complete"} if name == "done" else {"text": "x"}
        yield Event(name, data)


async def _failing(exc: Exception) -> AsyncIterator[Event]:
    yield Event("content", {"text": "a"})
    raise exc


def _names(generation: Generation) -> list[str]:
    return [entry.name for entry in generation.log.entries]


async def _run(source: AsyncIterator[Event], stop: str | None = None) -> Generation:
    generation = Generation("s" * 22, "ann", source, FOLLOWING, Local(), Log())
    generation.begin()
    ended = asyncio.Event()
    generation.start(lambda _: ended.set())
    if stop is not None:
        await asyncio.sleep(0.01)
        generation.stop(stop)
    await asyncio.wait_for(ended.wait(), 2)
    return generation


def test_a_reply_that_ends_by_itself_is_done() -> None:
    generation = asyncio.run(_run(_reply("content", "content", "done")))
    assert generation.outcome == "done"
    assert _names(generation) == ["start", "content", "content", "done"]
    assert generation.ending == Event("done", {"reason": "complete"})
    assert generation.log.closed
    first = generation.log.entries[0].wire
    assert first.startswith(b"id: " + b"s" * 22 + b":1\nevent: start\n")


def test_an_ended_generation_keeps_its_text_as_one_string_and_lets_its_finisher_go() -> None:
    """Kept for its resume window without Redis: the reply's text whole, not a string per
    event, and none of the chat's objects."""
    generation = asyncio.run(_run(_reply("content", "content", "content", "done")))
    assert generation.text == ["xxx"]
    assert generation.reasoning == []
    assert generation._finisher is FOLLOWING


def test_a_failure_the_backend_names_ends_in_its_error_event() -> None:
    failure = BackendError("upstream_timeout", "the model stopped responding")
    generation = asyncio.run(_run(_failing(failure)))
    assert generation.outcome == "error"
    assert _names(generation) == ["start", "content", "error"]
    assert events.decode(generation.log.entries[-1].wire).data["code"] == "upstream_timeout"


def test_any_other_failure_is_an_internal_error_event() -> None:
    generation = asyncio.run(_run(_failing(RuntimeError("boom"))))
    assert generation.outcome == "error"
    assert generation.ending == events.INTERNAL


@pytest.mark.parametrize(
    ("reason", "last"), [("cancelled", "done"), ("shutdown", "error"), ("disconnected", "content")]
)
def test_a_stop_from_outside_ends_it_with_its_reason(reason: str, last: str) -> None:
    generation = asyncio.run(_run(_reply("content", "content", "done", pause=0.05), stop=reason))
    assert generation.outcome == reason
    assert _names(generation)[-1] in (last, "start")
    if reason == "cancelled":
        assert generation.ending == events.CANCELLED
    if reason == "shutdown":
        assert generation.ending == events.SHUTDOWN


def _generations(window: float = 0.0, max_readers: int = 4) -> Generations:
    return Generations(Local(), None, window=window, max_readers=max_readers)


def test_with_no_window_a_generation_whose_reader_leaves_stops_at_once() -> None:
    async def body() -> str | None:
        generations = _generations()
        generation, cursor = generations.start("ann", _reply("content", pause=1), FOLLOWING, "MISS")
        generations.leave(generation, cursor)
        await generation.wait_ended()
        return generation.outcome

    assert asyncio.run(body()) == "disconnected"


def test_within_its_window_a_generation_waits_for_a_reader_to_come_back() -> None:
    async def body() -> tuple[str | None, list[str]]:
        generations = _generations(window=5)
        source = _reply("content", "content", "done", pause=0.02)
        generation, cursor = generations.start("ann", source, FOLLOWING, "MISS")
        generations.leave(generation, cursor)
        found = await generations.resume(generation.id, "ann", 1)
        assert found is not None
        _, again = found
        await generation.wait_ended()
        batch = again.take()
        return generation.outcome, [events.name_of(b) for b in events.blocks(batch.body)]

    outcome, names = asyncio.run(body())
    assert outcome == "done"
    assert names == ["content", "content", "done"]  # everything after entry 1, once


def test_a_resume_finds_nothing_of_another_user_or_from_before_what_is_kept() -> None:
    async def body() -> list[object]:
        generations = _generations(window=5)
        generation, _ = generations.start("ann", _reply("done"), FOLLOWING, "MISS")
        await generation.wait_ended()
        return [
            await generations.resume(generation.id, "bob", 0),
            await generations.resume(generation.id, "ann", 99),
            await generations.resume("unknown-stream-id-0000", "ann", 0),
        ]

    assert asyncio.run(body()) == [None, None, None]


def test_a_stream_takes_at_most_its_readers() -> None:
    async def body() -> None:
        generations = _generations(window=5, max_readers=2)
        generation, _ = generations.start("ann", _reply("content", pause=1), FOLLOWING, "MISS")
        assert await generations.resume(generation.id, "ann", 0) is not None
        with pytest.raises(Crowded):
            await generations.resume(generation.id, "ann", 0)
        await generations.aclose()

    asyncio.run(body())


def test_without_redis_a_stop_finds_only_this_workers_generations() -> None:
    async def body() -> tuple[bool, bool, str | None]:
        generations = _generations(window=5)
        generation, _ = generations.start("ann", _reply("content", pause=1), FOLLOWING, "MISS")
        elsewhere = await generations.stop("elsewhere-stream-00000", "ann")
        others = await generations.stop(generation.id, "bob")
        stopped = await generations.stop(generation.id, "ann")
        await generation.wait_ended()
        assert stopped
        return elsewhere, others, generation.outcome

    assert asyncio.run(body()) == (False, False, "cancelled")
