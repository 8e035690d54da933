"""`GET /auth/config`: what the page needs to sign people in (CHAT_OIDC_*), or that it
should ask for a token as before."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..deps import AppSettings

router = APIRouter(tags=["auth"])


@router.get("/auth/config")
async def auth_config(settings: AppSettings, response: Response) -> dict[str, Any]:
    """The OpenID provider the page signs in with: `{"oidc": {"issuer", "client_id",
    "scopes"}}`, or `{"oidc": null}` when tokens are pasted."""
    response.headers["Cache-Control"] = "no-cache"
    if settings.oidc_issuer is None:
        return {"oidc": None}
    return {
        "oidc": {
            "issuer": settings.oidc_issuer,
            "client_id": settings.oidc_client_id,
            "scopes": settings.oidc_scopes,
        }
    }
