"""A user's conversation history: read it, or forget it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from ..conversations import Conversations, HistoryUnavailable, NotFound
from ..deps import CurrentUser
from ..errors import NotFoundError, Unavailable

router = APIRouter(tags=["conversations"])

ConversationId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
    404: {"description": "No such conversation for this user"},
    503: {"description": "History storage is unavailable"},
}


@router.get("/conversations/{conversation_id}", responses=RESPONSES)
async def get_conversation(
    request: Request, user: CurrentUser, conversation_id: ConversationId
) -> dict[str, Any]:
    """The conversation's turns, oldest first."""
    conversations: Conversations = request.app.state.conversations
    try:
        turns = await conversations.history(user.sub, conversation_id)
    except NotFound:
        raise NotFoundError("conversation not found") from None
    except HistoryUnavailable:
        raise Unavailable("conversation history is unavailable; try again shortly") from None
    if not turns:
        raise NotFoundError("conversation not found")
    return {
        "id": conversation_id,
        "messages": [{"role": t.role, "content": t.content} for t in turns],
    }


@router.delete("/conversations/{conversation_id}", status_code=204, responses=RESPONSES)
async def delete_conversation(
    request: Request, user: CurrentUser, conversation_id: ConversationId
) -> Response:
    """Forget the conversation."""
    conversations: Conversations = request.app.state.conversations
    try:
        await conversations.forget(user.sub, conversation_id)
    except NotFound:
        raise NotFoundError("conversation not found") from None
    except HistoryUnavailable:
        raise Unavailable("conversation history is unavailable; try again shortly") from None
    return Response(status_code=204)
