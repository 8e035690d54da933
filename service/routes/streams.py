"""A stream by its id: resume it after the last event a client saw, or stop it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from ..chat import NOT_FOUND, check_stream_id, parse_last_event_id
from ..deps import ChatService, CurrentUser
from ..errors import NotFoundError
from ..record import record_of
from ..response import EventStream

router = APIRouter(tags=["streams"])

# Anything under /chat/streams/ lands here, slashes included (`a%2Fb` is decoded before
# routing): an id that is not a stream id is a 404 like any unknown one, never a new chat
# about `streams/...` on the route below.
StreamId = Annotated[str, Path()]
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
    404: {"description": "No such stream for this user (unknown, expired, or not retained)"},
}


@router.get(
    "/chat/streams/{stream_id:text}",
    status_code=200,
    response_class=EventStream,
    responses={
        200: {
            "description": "Server-Sent Events: the events after Last-Event-ID, then the rest",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **RESPONSES,
    },
)
async def resume_stream(
    request: Request,
    user: CurrentUser,
    chat: ChatService,
    stream_id: StreamId,
    last_event_id: Annotated[str | None, Query(max_length=200)] = None,
) -> EventStream:
    """Resume a stream after `Last-Event-ID` (header, or `?last_event_id=`)."""
    check_stream_id(stream_id)
    value = request.headers.get("last-event-id") or last_event_id
    after = 0
    if value:
        parsed = parse_last_event_id(value)
        if parsed is None or parsed[0] != stream_id:
            raise NotFoundError(NOT_FOUND)
        after = parsed[1]
    return await chat.resume(record_of(request.scope), user.sub, stream_id, after)


@router.delete("/chat/streams/{stream_id:text}", status_code=204, responses=RESPONSES)
async def stop_stream(user: CurrentUser, chat: ChatService, stream_id: StreamId) -> Response:
    """Stop the stream's generation, wherever it runs."""
    await chat.stop(user.sub, stream_id)
    return Response(status_code=204)
