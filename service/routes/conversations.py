"""A user's conversations: list them, read one, or forget it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from ..conversations import ID_PATTERN, HistoryUnavailable, NotFound
from ..deps import ConversationStore, CurrentUser
from ..errors import NotFoundError, Unavailable

router = APIRouter(tags=["conversations"])

ConversationId = Annotated[str, Path(pattern=ID_PATTERN)]
UNAVAILABLE = "conversation history is unavailable; try again shortly"
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
    404: {"description": "No such conversation for this user"},
    503: {"description": "History storage is unavailable"},
}


@router.get("/conversations", responses={k: v for k, v in RESPONSES.items() if k != 404})
async def list_conversations(
    conversations: ConversationStore,
    user: CurrentUser,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[0-9A-Za-z._:-]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The caller's conversations, most recently updated first; `next` pages on."""
    try:
        page = await conversations.listing(user.sub, cursor, limit)
    except HistoryUnavailable:
        raise Unavailable(UNAVAILABLE) from None
    items = [
        {"id": s.id, "title": s.title, "updated_at": s.updated_at, "turns": s.turns}
        for s in page.conversations
    ]
    return {"conversations": items, "next": page.next}


@router.get("/conversations/{conversation_id}", responses=RESPONSES)
async def get_conversation(
    conversations: ConversationStore, user: CurrentUser, conversation_id: ConversationId
) -> dict[str, Any]:
    """The conversation's turns, oldest first."""
    try:
        turns = await conversations.history(user.sub, conversation_id)
    except NotFound:
        raise NotFoundError("conversation not found") from None
    except HistoryUnavailable:
        raise Unavailable(UNAVAILABLE) from None
    return {
        "id": conversation_id,
        "messages": [{"role": t.role, "content": t.content} for t in turns],
    }


@router.delete("/conversations/{conversation_id}", status_code=204, responses=RESPONSES)
async def delete_conversation(
    conversations: ConversationStore, user: CurrentUser, conversation_id: ConversationId
) -> Response:
    """Forget the conversation."""
    try:
        await conversations.forget(user.sub, conversation_id)
    except NotFound:
        raise NotFoundError("conversation not found") from None
    except HistoryUnavailable:
        raise Unavailable(UNAVAILABLE) from None
    return Response(status_code=204)
