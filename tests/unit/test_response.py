"""The event stream as an ASGI response (service/response.py): the bytes it writes are the
log's, it leaves its generation when the client goes, it ends with `shutdown` when told,
and an idle one is pinged; called directly, in process, its head then its body."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from service import events
from service.events import PING, Event
from service.generation import FOLLOWING
from service.generations import Generations, Local
from service.record import RequestRecord
from service.response import Responses
from service.shutdown import Drain


async def _reply(pause: float = 0.0, count: int = 3) -> AsyncIterator[Event]:
    for n in range(count):
        if pause:
            await asyncio.sleep(pause)
        yield Event("content", {"text": str(n)})
    yield Event("done", {"reason": "complete"})


class Client:
    """uvicorn's side of one response: what was sent, and a receive that says `gone`."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def scope(self) -> dict[str, Any]:
        record = RequestRecord(time.perf_counter(), self.send)
        return {"type": "http", "state": {"record": record}}

    async def serve(self, stream: Any) -> None:
        """As the app and its outermost middleware do: the head within the app, then the
        body the response left for the middleware to run."""
        scope = self.scope()
        await stream(scope, self.receive, self.send)
        body = scope["state"]["record"].body
        if body is not None:
            await body(self.receive)


def _parts(window: float = 0.0, ping: float = 15.0) -> tuple[Generations, Responses]:
    drain = Drain(60)
    generations = Generations(Local(), drain, window=window)
    return generations, Responses(drain, generations, ping, 30.0)


def test_the_body_is_the_logs_bytes_in_order_and_then_the_end() -> None:
    async def body() -> tuple[Client, bytes, str, dict[str, str]]:
        generations, responses = _parts()
        generation, cursor = generations.start("ann", _reply(), FOLLOWING, "MISS")
        stream = responses.respond(generation, cursor, {"X-Cache": "MISS"})
        client = Client()
        await client.serve(stream)
        wires = b"".join(entry.wire for entry in generation.log.entries)
        headers = {k.decode(): v.decode() for k, v in stream.raw_headers}
        return client, wires, stream.stats.outcome, headers

    client, wires, outcome, headers = asyncio.run(body())
    assert client.body == wires
    assert [events.name_of(b) for b in events.blocks(wires)] == [
        "start", "content", "content", "content", "done",
    ]  # fmt: skip
    assert client.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert outcome == "done"
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-stream-id"] and headers["x-cache"] == "MISS"


def test_a_client_that_goes_leaves_the_generation_which_stops_without_a_window() -> None:
    async def body() -> tuple[str, str | None, int]:
        generations, responses = _parts(window=0)
        generation, cursor = generations.start("ann", _reply(pause=0.2), FOLLOWING, "MISS")
        stream = responses.respond(generation, cursor, {})
        client = Client()
        serving = asyncio.ensure_future(client.serve(stream))
        await asyncio.sleep(0.05)
        client.gone.set()
        await asyncio.wait_for(serving, 1)
        await generation.wait_ended()
        return stream.stats.outcome, generation.outcome, generation.readers

    assert asyncio.run(body()) == ("disconnected", "disconnected", 0)


def test_a_stream_stopped_for_shutdown_ends_with_the_shutdown_event_numbered_next() -> None:
    async def body() -> tuple[bytes, str]:
        generations, responses = _parts(window=30)
        generation, cursor = generations.start("ann", _reply(pause=1), FOLLOWING, "MISS")
        stream = responses.respond(generation, cursor, {})
        client = Client()
        serving = asyncio.ensure_future(client.serve(stream))
        await asyncio.sleep(0.05)  # `start` sent
        stream.stop("shutdown")
        await asyncio.wait_for(serving, 1)
        await generations.aclose()
        return client.body, stream.stats.outcome

    body_bytes, outcome = asyncio.run(body())
    blocks = events.blocks(body_bytes)
    assert [events.name_of(b) for b in blocks] == ["start", "error"]
    assert events.decode(blocks[-1]) == events.SHUTDOWN
    assert blocks[-1].startswith(blocks[0].split(b"\n")[0][:-1] + b"2\n")  # `<stream>:2`
    assert outcome == "shutdown"


def test_an_idle_stream_is_pinged() -> None:
    async def body() -> bytes:
        generations, responses = _parts(window=30, ping=0.05)
        generation, cursor = generations.start("ann", _reply(pause=0.3, count=1), FOLLOWING, "")
        stream = responses.respond(generation, cursor, {})
        client = Client()
        await asyncio.wait_for(client.serve(stream), 2)
        await generations.aclose()
        return client.body

    assert PING in asyncio.run(body())
