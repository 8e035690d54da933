"""Where the caller stands against the token budget (CHAT_TOKEN_BUDGET)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..deps import Budgets, CurrentUser

router = APIRouter(tags=["usage"])


@router.get("/usage", responses={401: {"description": "Missing or invalid bearer token"}})
async def usage(budgets: Budgets, user: CurrentUser, response: Response) -> dict[str, Any]:
    """The caller's token budget in its current window: `used` counts settled replies and
    the reservations of streams still open (`reserved`). `limit` is null when budgets are
    off."""
    response.headers["Cache-Control"] = "no-store"
    if not budgets.enabled:
        return {"limit": None, "used": None, "remaining": None, "reset_seconds": None}
    standing = await budgets.standing(user.sub)
    return {
        "limit": standing.limit,
        "used": standing.used,
        "remaining": standing.remaining,
        "reset_seconds": standing.reset_seconds,
        "reserved": standing.reserved,
        "window_seconds": budgets.window_seconds,
    }
