"""Bare baselines that emit the same events as the service's demo backend, with nothing else:
no auth, limits, cache, metrics or logs. Two of them, to place the service between:

- `starlette_app`: a Starlette `StreamingResponse` over an async generator (the usual way);
- `raw_app`: a raw ASGI callable writing each event with `send` (the floor).

`BENCH_DELAY_SCALE` paces them like CHAT_DEMO_DELAY_SCALE paces the demo (0: no sleeps).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from service.backends.demo import CHARACTER_PAUSE, THINKING_PAUSE, THINKING_STEPS, reply_for

SCALE = float(os.environ.get("BENCH_DELAY_SCALE", "0"))


def _event(event_id: int, name: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {name}\ndata: {payload}\n\n".encode()


async def events(message: str) -> AsyncIterator[bytes]:
    n = 1
    yield _event(n, "start", {"message": "connected"})
    for step in THINKING_STEPS:
        n += 1
        yield _event(n, "thinking", {"step": step})
        if SCALE:
            await asyncio.sleep(THINKING_PAUSE * SCALE)
    for character in reply_for(message):
        n += 1
        yield _event(n, "content", {"text": character})
        if SCALE:
            await asyncio.sleep(CHARACTER_PAUSE * SCALE)
    yield _event(n + 1, "done", {"reason": "complete"})


HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _chat(request: Any) -> StreamingResponse:
    message = request.path_params["message"]
    return StreamingResponse(events(message), media_type="text/event-stream", headers=HEADERS)


async def _health(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


starlette_app = Starlette(routes=[Route("/chat/{message:path}", _chat), Route("/healthz", _health)])

RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if not path.startswith("/chat/"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": RAW_HEADERS})
    async for chunk in events(unquote(path[len("/chat/") :])):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
