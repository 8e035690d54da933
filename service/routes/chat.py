"""The chat endpoints: a message in, an SSE stream of start/thinking/content/done out.

route -> auth (deps.CurrentUser) -> message checks -> admission (rate, slot, cache: one
Redis round trip; admission.py) -> a generation of the reply (generation.py, replies.py)
-> a response that reads it (streaming.py, sse.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import replies
from ..admission import Admission
from ..conversations import ID_PATTERN
from ..deps import AppServices, CurrentUser
from ..errors import InvalidInput, UnsupportedMediaType
from ..sse import EventStream
from ..state import Services, record_of
from ..streaming import respond, resume_from_header

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
    services: AppServices,
    message: Annotated[str, Path(min_length=1)],
) -> EventStream:
    """Stream a reply to the message in the path."""
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        return await resume_from_header(services, record_of(request.scope), user.sub, last_event_id)
    return await _respond(request, services, user.sub, _checked(request, services, message))


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
async def chat_post(request: Request, user: CurrentUser, services: AppServices) -> EventStream:
    """Stream a reply to `{"message": ...}`."""
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        return await resume_from_header(services, record_of(request.scope), user.sub, last_event_id)
    body = await _json_body(request)
    message = _checked(request, services, body.message)
    return await _respond(request, services, user.sub, message, body.conversation_id)


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


def _checked(request: Request, services: Services, message: str) -> str:
    record_of(request.scope).message_chars = len(message)
    if not message.strip():
        raise InvalidInput("message is empty")
    limit = services.settings.max_message_chars
    if len(message) > limit:
        raise InvalidInput(f"message is longer than {limit} characters")
    return message


async def _respond(
    request: Request,
    services: Services,
    user: str,
    message: str,
    conversation_id: str | None = None,
) -> EventStream:
    """Admit the request, start its generation, and answer with a stream that reads it."""
    record = record_of(request.scope)
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    admission = await Admission.admit(
        services,
        user,
        message,
        conversation_id=conversation_id,
        no_cache=no_cache,
        timing=record.timing,
    )
    record.cache = admission.ticket.mode
    try:
        finisher = replies.ChatFinisher(admission, services.conversations, user, message)
        if conversation_id is not None:
            await finisher.open_conversation(conversation_id)
        source = await replies.source_for(request.receive, services, admission, finisher)
    except BaseException:
        admission.release()  # nothing will stream: hand back what admission took
        raise
    _, cursor = services.generations.start(user, source, finisher, admission.ticket.mode)
    return respond(services, cursor, record, admission.headers())
