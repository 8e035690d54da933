"""The chat endpoints: a message in, an SSE stream of start/thinking/content/done out.

route -> auth (deps.CurrentUser) -> message checks -> rate limit, open-stream slot and
cache look-up (one Redis round trip) -> backend or replay -> sse.EventStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.types import Receive

from ..auth import Principal
from ..backends import NATURAL_ENDS, Backend, BackendError, ChatRequest, Turn
from ..cache import ResponseCache, cache_key
from ..config import Settings
from ..conversations import Conversations, HistoryUnavailable, NotFound, Opened
from ..deps import CurrentUser
from ..errors import (
    ClientGone,
    InvalidInput,
    NotFoundError,
    TooManyRequests,
    Unavailable,
    UnsupportedMediaType,
    UpstreamFailed,
)
from ..limits import RateLimits, RateResult, StreamSlots
from ..observability import metrics
from ..observability.logging import get_logger
from ..shutdown import Drain
from ..sse import Event, EventStream

router = APIRouter(tags=["chat"])
log = get_logger("service.chat")


class TextConvertor(StringConvertor):
    """Like Starlette's `path`, but `.` matches line breaks too, so `/chat/a%0Ab` reaches the
    route with its newline instead of a 404 (Starlette decodes the path before matching)."""

    regex = "(?s:.*)"


register_url_convertor("text", TextConvertor())

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
    "/chat/{message:text}", status_code=200, response_class=EventStream, responses=SSE_RESPONSE
)
async def chat_get(
    request: Request,
    user: CurrentUser,
    message: Annotated[str, Path(min_length=1)],
) -> EventStream:
    """Stream a reply to the message in the path."""
    return await _respond(request, user, _checked(request, message))


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
    message = _checked(request, body.message)
    return await _respond(request, user, message, body.conversation_id)


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
    message: str,
    conversation_id: str | None = None,
) -> EventStream:
    """Admit the request (rate, slot, cache), then stream."""
    state = request.app.state
    backend: Backend = state.backend
    cache: ResponseCache = state.cache

    # History makes a reply particular to its conversation: those never touch the cache.
    key = None
    request.state.cache = "OFF"
    if cache.enabled and conversation_id is None:
        scope = user.sub if state.settings.cache_scope == "user" else None
        key = cache_key(backend.name, backend.model, message, scope)
        bypass = "no-cache" in request.headers.get("cache-control", "").lower()
        request.state.cache = "BYPASS" if bypass else "MISS"

    rate, slot_id, cached, leading = await _admit(request, user, key)
    if request.state.cache != "OFF" and request.state.cache != "BYPASS":
        request.state.cache = "HIT" if cached is not None else "MISS"
        metrics.cache_requests.labels("hit" if cached is not None else "miss").inc()
    try:
        return await _stream(
            request, user, rate, message, conversation_id, slot_id, key, cached, leading
        )
    except BaseException:
        state.stream_slots.release(slot_id)  # nothing will stream: hand the slot back
        raise


async def _admit(
    request: Request, user: Principal, key: str | None
) -> tuple[RateResult, str, list[Event] | None, bool]:
    """The rate check, a stream slot and the cache look-up. With Redis the three go in one
    round trip (pipelining.py), and a request over its rate hands back what it took; the
    rate budget is spent either way, as it would be checked first. Returns the rate, the
    slot, and the cache's answer: the stored events, or None and whether to lead."""
    state = request.app.state
    limits: RateLimits = state.rate_limits
    slots: StreamSlots = state.stream_slots
    cache: ResponseCache = state.cache
    single_flight = request.state.cache == "MISS"
    started = time.perf_counter()

    async def lookup() -> tuple[list[Event] | None, bool]:
        if key is None or not single_flight:
            return None, key is not None
        return await cache.lookup(key)

    rate_key = f"user:{user.sub}"
    slot_id: str | None = None
    cached: list[Event] | None = None
    leading = False
    known = limits.known_refusal(rate_key)
    if known is not None:
        rate = known
    elif state.store is None:  # in memory each step is instant: nothing to overlap or undo
        rate = await limits.hit(rate_key)
        if rate.allowed:
            slot_id = await slots.acquire(user.sub)
            cached, leading = await lookup() if slot_id is not None else (None, False)
    else:
        rate, slot_id, (cached, leading) = await asyncio.gather(
            limits.hit(rate_key), slots.acquire(user.sub), lookup()
        )
    timing = request.state.timing
    timing.limits = timing.cache = (time.perf_counter() - started) * 1000  # one wait

    if not rate.allowed or slot_id is None:
        if leading and single_flight:
            cache.finish(key, None, leading=True)  # type: ignore[arg-type]
        if slot_id is not None:
            # Both go in this batch, so both are gone when the client hears it is refused.
            released = slots.release(slot_id, urgent=True)
            if released is not None:
                await asyncio.wait([released], timeout=state.store.timeout)
        if not rate.allowed:
            metrics.rate_limited.labels("rate").inc()
            raise TooManyRequests("rate limit reached", rate.reset_seconds, rate.headers())
        metrics.rate_limited.labels("streams").inc()
        raise TooManyRequests("too many open streams", STREAMS_RETRY_AFTER, rate.headers())
    return rate, slot_id, cached, leading


async def _stream(
    request: Request,
    user: Principal,
    rate: RateResult,
    message: str,
    conversation_id: str | None,
    slot: str,
    key: str | None,
    cached: list[Event] | None,
    leading: bool,
) -> EventStream:
    state = request.app.state
    settings: Settings = state.settings
    backend: Backend = state.backend
    cache: ResponseCache = state.cache
    single_flight = request.state.cache == "MISS"
    try:
        opened = await _open_conversation(state.conversations, user, conversation_id, message)
    except BaseException:
        if leading and single_flight:
            cache.finish(key, None, leading=True)  # type: ignore[arg-type]
        raise
    chat = ChatRequest(message=message, history=opened.history if opened else ())

    remember = _remember(state.conversations, user, conversation_id, opened, message)
    events: AsyncIterator[Event]
    if cached is not None:
        events = _replay(cached, remember)
    elif single_flight and not leading:
        events = _follow(backend, chat, cache, key, remember)  # type: ignore[arg-type]
    else:
        lead = leading and single_flight
        try:
            upstream = await _open_unless_gone(request, backend, chat)
        except BaseException:
            if lead:
                cache.finish(key, None, leading=True)  # type: ignore[arg-type]
            raise
        events = _generate(upstream, cache, key, lead, remember)
    return EventStream(
        events,
        ping_seconds=settings.sse_ping_seconds,
        send_timeout=settings.sse_send_timeout,
        headers={**rate.headers(), "X-Cache": "HIT" if cached is not None else "MISS"},
        on_start=_opened(state.drain),
        on_end=_closed(state.drain, state.stream_slots, slot, request.state.started),
    )


async def _open_conversation(
    conversations: Conversations, user: Principal, conversation_id: str | None, message: str
) -> Opened | None:
    if conversation_id is None:
        return None
    try:
        return await conversations.open(user.sub, conversation_id, message)
    except NotFound:
        raise NotFoundError("conversation not found") from None
    except HistoryUnavailable:
        raise Unavailable("conversation history is unavailable; try again shortly") from None


# Keeps a finished turn; returns the event to end with instead of `done` when it cannot.
Remember = Callable[[list[Event]], Awaitable[Event | None]] | None
NOT_KEPT = Event(
    "error",
    {"code": "history_unavailable", "message": "the reply could not be saved; send it again"},
)


def _remember(
    conversations: Conversations,
    user: Principal,
    conversation_id: str | None,
    opened: Opened | None,
    message: str,
) -> Remember:
    if conversation_id is None or opened is None:
        return None

    async def remember(events: list[Event]) -> Event | None:
        reply = "".join(e.data.get("text", "") for e in events if e.name == "content")
        turns = [Turn("user", message), Turn("assistant", reply)]
        try:
            kept = await conversations.append(user.sub, conversation_id, opened.epoch, turns)
        except HistoryUnavailable:
            log.warning("conversation turn not stored", conversation_id=conversation_id)
            return NOT_KEPT
        if not kept:  # deleted while the reply streamed: it stays deleted
            log.info("conversation deleted during the reply; turn dropped")
        return None

    return remember


async def _open_unless_gone(
    request: Request, backend: Backend, chat: ChatRequest
) -> AsyncIterator[Event]:
    """Open the backend, unless the client leaves first: an upstream that is slow to answer
    (retries included) would otherwise run on for nobody, holding the user's stream slot."""
    if not backend.opens_upstream:
        return await _open(backend, chat)
    opening = asyncio.ensure_future(_open(backend, chat))
    leaving = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({opening, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if opening.done():
        return opening.result()
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await opening
    raise ClientGone("the client closed the request")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _open(backend: Backend, chat: ChatRequest) -> AsyncIterator[Event]:
    metrics.backend_streams.labels(backend.name).inc()
    try:
        return await backend.open(chat)
    except BackendError as exc:
        metrics.backend_errors.labels(exc.code).inc()
        raise UpstreamFailed(exc.status, exc.code, exc.message) from None


def _opened(drain: Drain) -> Any:
    def opened(stream: EventStream) -> None:
        drain.add(stream)
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
        slots.release(slot)

    return closed


START = Event("start", {"message": "connected"})


async def _replay(events: list[Event], remember: Remember) -> AsyncIterator[Event]:
    yield START
    for event in events:
        if event.name == "done" and remember is not None:
            # Before `done`: a client's next turn must see this one.
            failure = await remember(events)
            if failure is not None:
                yield failure
                return
        yield event


async def _follow(
    backend: Backend, chat: ChatRequest, cache: ResponseCache, key: str, remember: Remember
) -> AsyncIterator[Event]:
    """An identical request is generating elsewhere: wait for it (pings keep this stream
    alive meanwhile) and replay what it stored; if it failed, generate here after all."""
    yield START
    waited = await cache.wait(key)
    if waited is not None:
        async for event in _replay(waited, remember):
            if event is not START:
                yield event
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
    leading: bool,
    remember: Remember,
) -> AsyncIterator[Event]:
    """Stream the backend's events; on `done`, remember the turn in its conversation
    (before `done` goes out, so a client's next turn sees it) and store the events in the
    cache (after, since nobody waits on that). A leader's single-flight lock is released
    however the stream ends, so waiters never wait on a stream that is gone."""
    record = key is not None or remember is not None
    recorded: list[Event] = []
    completed = False
    # aclosing: a disconnect closes the backend's generator (and its upstream request) now,
    # not whenever the garbage collector gets to it.
    events = cast(AsyncGenerator[Event, None], upstream)
    try:
        yield START
        async with aclosing(events):
            async for event in events:
                if record:
                    recorded.append(event)
                if event.name == "done":
                    completed = event.data.get("reason") in NATURAL_ENDS
                    if remember is not None:
                        failure = await remember(recorded)
                        if failure is not None:
                            yield failure
                            return
                yield event
    except BackendError as exc:
        completed = False
        metrics.backend_errors.labels(exc.code).inc()
        yield Event("error", {"code": exc.code, "message": exc.message})
    finally:
        if key is not None and (completed or leading):
            cache.finish(key, recorded if completed else None, leading)
