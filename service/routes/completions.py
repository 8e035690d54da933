"""OpenAI's Chat Completions and models, for the clients that already speak them (the
`openai` SDKs, LangChain, LiteLLM, ...): the same admission, generation, cache, resume and
stop as /chat, written in OpenAI's chunks (completions.py), errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import completions
from ..chat import Ask
from ..completions import ChunkCodec
from ..conversations import MAX_TURN_CHARS
from ..deps import AppSettings, ChatService, CurrentUser
from ..errors import OpenAIError, UnsupportedMediaType
from ..record import record_of
from ..response import EventStream

router = APIRouter(tags=["openai"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`chat.completion`, or with `stream: true` Server-Sent Events of "
        "`chat.completion.chunk` and a last `data: [DONE]`",
        "content": {
            "application/json": {"schema": completions.COMPLETION_SCHEMA},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    400: {"description": "Invalid request"},
    401: {"description": "Missing or invalid bearer token"},
    404: {"description": "Unknown model, or Last-Event-ID names no stream of this user's"},
    413: {"description": "Request body too large"},
    429: {"description": "Rate limit, open streams or token budget"},
}


@router.post(
    "/v1/chat/completions",
    responses=RESPONSES,
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": completions.request_schema()}},
        }
    },
)
async def create_completion(
    request: Request, user: CurrentUser, chat: ChatService, settings: AppSettings
) -> EventStream | JSONResponse:
    """OpenAI's Chat Completions: streamed with `stream: true`, else in one piece."""
    record = record_of(request.scope)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        return await chat.resume_from_header(
            record, user.sub, last_event_id, codec=completions.NAME, limits=completions.limits
        )
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("send the request as application/json")
    body = completions.parse_request(
        await request.body(), 2 * settings.history_turns + 2, MAX_TURN_CHARS
    )
    if body.model not in settings.model_names:
        raise OpenAIError(
            404, f"The model `{body.model}` does not exist", "model_not_found", "model"
        )
    message = body.messages[-1].text
    chat.check(message, record)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    codec = ChunkCodec(body.model, include_usage)
    ask = Ask(
        message,
        completions.history_of(body),
        model=None if body.model == settings.default_model else body.model,
        max_tokens=body.limit,
        params=body.sampling(),
        subject=completions.subject_of(body),
        codec=codec,
        limits=completions.limits,
    )
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    if body.stream:
        return await chat.respond(request.receive, record, user.sub, ask, no_cache)
    generation, headers = await chat.complete(request.receive, record, user.sub, ask, no_cache)
    if generation.outcome != "done" or generation.ending is None:
        raise completions.failure_of(generation)
    answer = completions.completion_of(generation, codec)
    return JSONResponse(answer, headers={**headers, "X-Stream-ID": generation.id})


@router.get("/v1/models", responses={401: {"description": "Missing or invalid bearer token"}})
async def list_models(user: CurrentUser, settings: AppSettings) -> dict[str, Any]:
    """The models served, in OpenAI's list shape."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "chat-service"}
            for name in settings.model_names
        ],
    }
