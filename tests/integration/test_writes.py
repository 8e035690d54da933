"""Body chunks written at once (service/writes.py) against uvicorn's own httptools server on
a real socket: the bytes are exactly those of its `send`, and it writes nothing where `send`
would wait or refuse. It leans on uvicorn's request cycle; a uvicorn that changes it fails
here, not silently in production."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
import uvloop

from service.writes import write_now, writer

CHUNK = {"type": "http.response.body", "more_body": True}
END = {"type": "http.response.body", "body": b"", "more_body": False}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    seen = scope["app"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    cycle = writer(send)
    seen["cycle"] = cycle is not None
    assert cycle is not None
    path = scope["path"]
    if scope["method"] == "HEAD":
        seen["head"] = write_now(cycle, b"x")
    elif path == "/chunks":
        seen["written"] = [write_now(cycle, b"hello ")]
        await send({**CHUNK, "body": b"world"})
        seen["written"].append(write_now(cycle, b"!"))
    elif path == "/unread":
        written = 0
        while written < 4096 and write_now(cycle, b"x" * 65536):
            written += 1
        seen["refused_after"] = written
        try:
            async with asyncio.timeout(0.5):
                await send({**CHUNK, "body": b"y"})
            seen["send_waited"] = False
        except TimeoutError:
            seen["send_waited"] = True
        seen["unread"].set()
        while (await receive())["type"] != "http.disconnect":
            pass
        seen["after_gone"] = write_now(cycle, b"z")
        seen["gone"].set()
        return
    await send(END)
    seen["after_end"] = write_now(cycle, b"late")


async def _serve(requests: list[bytes], unread: bool = False) -> tuple[dict[str, Any], bytes]:
    seen: dict[str, Any] = {"unread": asyncio.Event(), "gone": asyncio.Event()}

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "app": seen}, receive, send)

    listening = socket.create_server(("127.0.0.1", 0))  # connections wait in its backlog
    port = listening.getsockname()[1]
    config = uvicorn.Config(asgi, http="httptools", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[listening]))
    try:
        reader, writer_ = await asyncio.open_connection("127.0.0.1", port)
        for request in requests:
            writer_.write(request)
        if unread:
            await asyncio.wait_for(seen["unread"].wait(), 30)
            writer_.transport.abort()
            await asyncio.wait_for(seen["gone"].wait(), 30)
            return seen, b""
        received = await asyncio.wait_for(reader.read(1 << 20), 10)
        while not received.endswith(b"0\r\n\r\n"):
            received += await asyncio.wait_for(reader.read(1 << 20), 10)
        writer_.close()
        return seen, received
    finally:
        server.should_exit = True
        await serving


def test_chunks_written_at_once_are_the_bytes_send_would_write_in_their_order() -> None:
    request = b"GET /chunks HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    seen, received = uvloop.run(_serve([request]))
    assert seen["cycle"] and seen["written"] == [True, True]
    body = received.partition(b"\r\n\r\n")[2]
    assert body == b"6\r\nhello \r\n5\r\nworld\r\n1\r\n!\r\n0\r\n\r\n"
    assert seen["after_end"] is False  # the response is complete


def test_nothing_is_written_at_once_to_a_head_request() -> None:
    seen, received = uvloop.run(
        _serve([b"HEAD /chunks HTTP/1.1\r\nhost: x\r\n\r\nGET /chunks HTTP/1.1\r\nhost: x\r\n\r\n"])
    )
    assert seen["head"] is False
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert received.count(b"HTTP/1.1 200 OK") == 2  # the HEAD's answer carries no body


def test_a_client_that_stops_reading_is_refused_where_send_would_wait_and_then_when_gone() -> None:
    seen, _ = uvloop.run(_serve([b"GET /unread HTTP/1.1\r\nhost: x\r\n\r\n"], unread=True))
    # The socket's buffers take a few MiB at most; then writing is paused, not buffered on.
    assert 1 <= seen["refused_after"] < 4096
    assert seen["send_waited"] is True
    assert seen["after_gone"] is False
