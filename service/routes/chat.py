"""The chat endpoints: a message in, an SSE stream of start/thinking/content/done out.

route -> auth (deps.CurrentUser) -> rate limit (deps.RateLimited) -> message checks ->
open-stream slot -> cache look-up -> backend or replay -> sse.EventStream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..auth import Principal
from ..backends import Backend, BackendError, ChatRequest
from ..cache import ResponseCache, cache_key
from ..config import Settings
from ..deps import CurrentUser, RateLimited
from ..errors import InvalidInput, TooManyRequests, UnsupportedMediaType
from ..limits import RateResult, StreamSlots
from ..observability import metrics
from ..shutdown import Drain
from ..sse import Event, EventStream

router = APIRouter(tags=["chat"])

# A slot frees when one of the user's streams ends; there is no better moment to name.
STREAMS_RETRY_AFTER = 5

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
    request: Request,
    user: CurrentUser,
    rate: RateLimited,
    message: Annotated[str, Path(min_length=1)],
) -> EventStream:
    """Stream a reply to the message in the path."""
    return await _respond(request, user, rate, _checked(request, message))


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
async def chat_post(request: Request, user: CurrentUser, rate: RateLimited) -> EventStream:
    """Stream a reply to `{"message": ...}`."""
    body = await _json_body(request)
    return await _respond(request, user, rate, _checked(request, body.message))


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


async def _respond(
    request: Request, user: Principal, rate: RateResult, message: str
) -> EventStream:
    state = request.app.state
    settings: Settings = state.settings
    timing = request.state.timing
    chat = ChatRequest(message=message)

    started = time.perf_counter()
    slots: StreamSlots = state.stream_slots
    slot = await slots.acquire(user.sub)
    timing.limits += (time.perf_counter() - started) * 1000
    if slot is None:
        metrics.rate_limited.labels("streams").inc()
        raise TooManyRequests("too many open streams", STREAMS_RETRY_AFTER, rate.headers())

    cache: ResponseCache = state.cache
    backend: Backend = state.backend
    key = cached = None
    request.state.cache = "OFF"
    if cache.enabled and not chat.history:
        key = cache_key(backend.name, backend.model, message)
        if "no-cache" in request.headers.get("cache-control", "").lower():
            request.state.cache = "BYPASS"
        else:
            started = time.perf_counter()
            cached = await cache.get(key)
            timing.cache = (time.perf_counter() - started) * 1000
            request.state.cache = "HIT" if cached is not None else "MISS"
            metrics.cache_requests.labels("hit" if cached is not None else "miss").inc()

    if cached is not None:
        events = _replay(cached)
    else:
        events = _generate(backend, chat, cache, key, single_flight=request.state.cache == "MISS")
    return EventStream(
        events,
        ping_seconds=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers={**rate.headers(), "X-Cache": "HIT" if cached is not None else "MISS"},
        on_start=_opened(state.drain),
        on_end=_closed(state.drain, slots, slot, request.state.started),
    )


def _opened(drain: Drain) -> Any:
    def opened(stream: EventStream) -> None:
        drain.streams.add(stream)
        metrics.streams_active.inc()

    return opened


def _closed(drain: Drain, slots: StreamSlots, slot: str, started: float) -> Any:
    async def closed(stream: EventStream) -> None:
        drain.streams.discard(stream)
        metrics.streams_active.dec()
        stats = stream.stats
        metrics.stream_duration.labels(stats.outcome).observe(time.perf_counter() - started)
        if stats.first_content_at is not None:
            metrics.time_to_first_token.observe(stats.first_content_at - started)
        for name, count in stats.counts.items():
            metrics.stream_events.labels(name).inc(count)
        await slots.release(slot)

    return closed


START = Event("start", {"message": "connected"})


async def _replay(events: list[Event]) -> AsyncIterator[Event]:
    yield START
    for event in events:
        yield event


async def _generate(
    backend: Backend,
    chat: ChatRequest,
    cache: ResponseCache,
    key: str | None,
    single_flight: bool,
) -> AsyncIterator[Event]:
    """Run the backend, recording its events for the cache when there is a key.

    With `single_flight`, an identical request already generating elsewhere is waited for
    (this stream is pinged meanwhile) and replayed, instead of running the backend twice.
    """
    yield START
    if key is None:
        async for event in _backend_events(backend, chat):
            yield event
        return
    leading = not single_flight or await cache.lead(key)
    if not leading:
        waited = await cache.wait(key)
        if waited is not None:
            for event in waited:
                yield event
            return
    recorded: list[Event] = []
    try:
        async for event in _backend_events(backend, chat):
            recorded.append(event)
            yield event
        if recorded and recorded[-1].name == "done":
            await cache.put(key, recorded)
    finally:
        if leading and single_flight:
            await cache.land(key)


async def _backend_events(backend: Backend, chat: ChatRequest) -> AsyncIterator[Event]:
    metrics.backend_streams.labels(backend.name).inc()
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
