"""The chat endpoints: a message in, an SSE stream of start/thinking/content/done out.

route -> auth (deps.CurrentUser) -> the chat (chat.py: message checks, admission, the
reply's generation, the response that reads it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..chat import Ask
from ..conversations import ID_PATTERN
from ..deps import ChatService, CurrentUser
from ..errors import InvalidInput, UnsupportedMediaType
from ..record import record_of
from ..response import EventStream

router = APIRouter(tags=["chat"])


SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: start, thinking*, content*, then done or error",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    401: {"description": "Missing or invalid bearer token"},
    404: {"description": "Last-Event-ID names no stream of this user's (to resume)"},
    413: {"description": "Request body too large"},
    415: {"description": "Body is not JSON"},
    422: {"description": "Empty, too long or malformed message"},
    429: {"description": "Rate limit or open-stream limit reached"},
}


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: str
    conversation_id: str | None = Field(None, pattern=ID_PATTERN)


@router.get(
    "/chat/{message:text}", status_code=200, response_class=EventStream, responses=SSE_RESPONSE
)
async def chat_get(
    request: Request,
    user: CurrentUser,
    chat: ChatService,
    message: Annotated[str, Path(min_length=1)],
) -> EventStream:
    """Stream a reply to the message in the path."""
    record = record_of(request.scope)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        return await chat.resume_from_header(record, user.sub, last_event_id)
    chat.check(message, record)
    return await chat.respond(request.receive, record, user.sub, Ask(message), _no_cache(request))


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
async def chat_post(request: Request, user: CurrentUser, chat: ChatService) -> EventStream:
    """Stream a reply to `{"message": ...}`."""
    record = record_of(request.scope)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        return await chat.resume_from_header(record, user.sub, last_event_id)
    body = await _json_body(request)
    chat.check(body.message, record)
    ask = Ask(body.message, conversation_id=body.conversation_id)
    return await chat.respond(request.receive, record, user.sub, ask, _no_cache(request))


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


def _no_cache(request: Request) -> bool:
    return "no-cache" in request.headers.get("cache-control", "").lower()
