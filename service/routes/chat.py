"""The chat endpoints: a message in, an SSE stream of start/thinking/content/done out."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..backends import Backend, BackendError, ChatRequest
from ..config import Settings
from ..deps import CurrentUser
from ..errors import InvalidInput, UnsupportedMediaType
from ..observability import metrics
from ..shutdown import Drain
from ..sse import Event, EventStream

router = APIRouter(tags=["chat"])

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: start, thinking*, content*, then done or error",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    401: {"description": "Missing or invalid bearer token"},
    413: {"description": "Request body too large"},
    415: {"description": "Body is not JSON"},
    422: {"description": "Empty, too long or malformed message"},
    429: {"description": "Rate limit or open-stream limit reached"},
}


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: str
    conversation_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")


@router.get(
    "/chat/{message:path}", status_code=200, response_class=EventStream, responses=SSE_RESPONSE
)
async def chat_get(
    request: Request, user: CurrentUser, message: Annotated[str, Path(min_length=1)]
) -> EventStream:
    """Stream a reply to the message in the path."""
    return _stream(request, _checked(request, message))


@router.post(
    "/chat",
    status_code=200,
    response_class=EventStream,
    responses=SSE_RESPONSE,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatBody.model_json_schema()}},
        }
    },
)
async def chat_post(request: Request, user: CurrentUser) -> EventStream:
    """Stream a reply to `{"message": ...}`."""
    body = await _json_body(request)
    return _stream(request, _checked(request, body.message))


async def _json_body(request: Request) -> ChatBody:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("send the message as application/json")
    try:
        return ChatBody.model_validate_json(await request.body())
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidInput(detail) from None


def _checked(request: Request, message: str) -> str:
    settings: Settings = request.app.state.settings
    request.state.message_chars = len(message)
    if not message.strip():
        raise InvalidInput("message is empty")
    if len(message) > settings.max_message_chars:
        raise InvalidInput(f"message is longer than {settings.max_message_chars} characters")
    return message


def _stream(request: Request, message: str) -> EventStream:
    settings: Settings = request.app.state.settings
    drain: Drain = request.app.state.drain
    started: float = request.state.started

    def opened(stream: EventStream) -> None:
        drain.streams.add(stream)
        metrics.streams_active.inc()

    def closed(stream: EventStream) -> None:
        drain.streams.discard(stream)
        metrics.streams_active.dec()
        stats = stream.stats
        metrics.stream_duration.labels(stats.outcome).observe(time.perf_counter() - started)
        if stats.first_content_at is not None:
            metrics.time_to_first_token.observe(stats.first_content_at - started)
        for name, count in stats.counts.items():
            metrics.stream_events.labels(name).inc(count)

    return EventStream(
        _events(request.app.state.backend, ChatRequest(message=message)),
        ping_seconds=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers={"x-cache": "MISS"},
        on_start=opened,
        on_end=closed,
    )


async def _events(backend: Backend, chat: ChatRequest) -> AsyncIterator[Event]:
    yield Event("start", {"message": "connected"})
    try:
        # aclosing: a disconnect closes the backend's generator (and its upstream request)
        # now, not whenever the garbage collector gets to it.
        events = cast(AsyncGenerator[Event, None], backend.stream(chat))
        async with aclosing(events):
            async for event in events:
                yield event
    except BackendError as exc:
        metrics.backend_errors.labels(exc.code).inc()
        yield Event("error", {"code": exc.code, "message": exc.message})
