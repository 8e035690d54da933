"""The chat endpoints: a message in, an SSE stream of start/thinking/content/done out.

route -> auth (deps.CurrentUser) -> rate limit (deps.RateLimited) -> message checks ->
open-stream slot -> cache look-up -> backend or replay -> sse.EventStream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..auth import Principal
from ..backends import Backend, BackendError, ChatRequest, Turn
from ..cache import ResponseCache, cache_key
from ..config import Settings
from ..conversations import Conversations, HistoryUnavailable, NotFound
from ..deps import CurrentUser, RateLimited
from ..errors import (
    InvalidInput,
    NotFoundError,
    TooManyRequests,
    Unavailable,
    UnsupportedMediaType,
    UpstreamFailed,
)
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
    message = _checked(request, body.message)
    return await _respond(request, user, rate, message, body.conversation_id)


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
    request: Request,
    user: Principal,
    rate: RateResult,
    message: str,
    conversation_id: str | None = None,
) -> EventStream:
    state = request.app.state
    timing = request.state.timing
    started = time.perf_counter()
    slots: StreamSlots = state.stream_slots
    slot = await slots.acquire(user.sub)
    timing.limits += (time.perf_counter() - started) * 1000
    if slot is None:
        metrics.rate_limited.labels("streams").inc()
        raise TooManyRequests("too many open streams", STREAMS_RETRY_AFTER, rate.headers())
    try:
        return await _stream(request, user, rate, message, conversation_id, slot)
    except BaseException:
        await slots.release(slot)  # nothing will stream: hand the slot back now
        raise


async def _stream(
    request: Request,
    user: Principal,
    rate: RateResult,
    message: str,
    conversation_id: str | None,
    slot: str,
) -> EventStream:
    state = request.app.state
    settings: Settings = state.settings
    backend: Backend = state.backend
    cache: ResponseCache = state.cache
    history = await _history(state.conversations, user, conversation_id)
    chat = ChatRequest(message=message, history=history)

    key = cached = None
    request.state.cache = "OFF"
    if cache.enabled and not history:
        key = cache_key(backend.name, backend.model, message)
        if "no-cache" in request.headers.get("cache-control", "").lower():
            request.state.cache = "BYPASS"
        else:
            started = time.perf_counter()
            cached = await cache.get(key)
            request.state.timing.cache = (time.perf_counter() - started) * 1000
            request.state.cache = "HIT" if cached is not None else "MISS"
            metrics.cache_requests.labels("hit" if cached is not None else "miss").inc()

    remember = _remember(state.conversations, user, conversation_id, message)
    events: AsyncIterator[Event]
    if cached is not None:
        events = _replay(cached, remember)
    else:
        single_flight = key is not None and request.state.cache == "MISS"
        if single_flight and not await cache.lead(key):  # type: ignore[arg-type]
            events = _follow(backend, chat, cache, key, remember)  # type: ignore[arg-type]
        else:
            try:
                upstream = await _open(backend, chat)
            except BaseException:
                if single_flight:
                    await cache.land(key)  # type: ignore[arg-type]
                raise
            events = _generate(upstream, cache, key, single_flight, remember)
    return EventStream(
        events,
        ping_seconds=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers={**rate.headers(), "X-Cache": "HIT" if cached is not None else "MISS"},
        on_start=_opened(state.drain),
        on_end=_closed(state.drain, state.stream_slots, slot, request.state.started),
    )


async def _history(
    conversations: Conversations, user: Principal, conversation_id: str | None
) -> list[Turn]:
    if conversation_id is None:
        return []
    try:
        return await conversations.history(user.sub, conversation_id)
    except NotFound:
        raise NotFoundError("conversation not found") from None
    except HistoryUnavailable:
        raise Unavailable("conversation history is unavailable; try again shortly") from None


Remember = Callable[[list[Event]], Awaitable[None]] | None


def _remember(
    conversations: Conversations, user: Principal, conversation_id: str | None, message: str
) -> Remember:
    if conversation_id is None:
        return None

    async def remember(events: list[Event]) -> None:
        reply = "".join(e.data.get("text", "") for e in events if e.name == "content")
        turns = [Turn("user", message), Turn("assistant", reply)]
        await conversations.append(user.sub, conversation_id, turns)

    return remember


async def _open(backend: Backend, chat: ChatRequest) -> AsyncIterator[Event]:
    metrics.backend_streams.labels(backend.name).inc()
    try:
        return await backend.open(chat)
    except BackendError as exc:
        metrics.backend_errors.labels(exc.code).inc()
        raise UpstreamFailed(exc.status, exc.code, exc.message) from None


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


async def _replay(events: list[Event], remember: Remember) -> AsyncIterator[Event]:
    yield START
    for event in events:
        yield event
    if remember is not None:
        await remember(events)


async def _follow(
    backend: Backend, chat: ChatRequest, cache: ResponseCache, key: str, remember: Remember
) -> AsyncIterator[Event]:
    """An identical request is generating elsewhere: wait for it (pings keep this stream
    alive meanwhile) and replay what it stored; if it failed, generate here after all."""
    yield START
    waited = await cache.wait(key)
    if waited is not None:
        for event in waited:
            yield event
        if remember is not None:
            await remember(waited)
        return
    try:
        upstream = await _open(backend, chat)
    except UpstreamFailed as exc:
        yield Event("error", {"code": exc.code, "message": exc.detail})
        return
    async for event in _generate(upstream, cache, key, False, remember):
        if event is not START:
            yield event


async def _generate(
    upstream: AsyncIterator[Event],
    cache: ResponseCache,
    key: str | None,
    single_flight: bool,
    remember: Remember,
) -> AsyncIterator[Event]:
    """Stream the backend's events; on `done`, store them in the cache when there is a key
    and in the conversation when there is one. The single-flight lock is released however
    the stream ends, so waiters never wait on a stream that is gone."""
    yield START
    record = key is not None or remember is not None
    recorded: list[Event] = []
    try:
        async for event in _backend_events(upstream):
            if record:
                recorded.append(event)
            yield event
        if recorded and recorded[-1].name == "done":
            if key is not None:
                await cache.put(key, recorded)
            if remember is not None:
                await remember(recorded)
    finally:
        if single_flight:
            await cache.land(key)  # type: ignore[arg-type]


async def _backend_events(upstream: AsyncIterator[Event]) -> AsyncIterator[Event]:
    try:
        # aclosing: a disconnect closes the backend's generator (and its upstream request)
        # now, not whenever the garbage collector gets to it.
        events = cast(AsyncGenerator[Event, None], upstream)
        async with aclosing(events):
            async for event in events:
                yield event
    except BackendError as exc:
        metrics.backend_errors.labels(exc.code).inc()
        yield Event("error", {"code": exc.code, "message": exc.message})
