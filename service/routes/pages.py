"""`GET /`: the chat page for browsers, the demo text stream for curl.

The choice follows the Accept header (RFC 9110 §12.5.1): the page only when `text/html` is
asked for explicitly and ranks at least as high as `text/plain`, so `curl` (`*/*`) gets the
stream of the example and every browser gets HTML.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from ..backends.demo import plain_text
from ..deps import ThePage, spend_address_budget

router = APIRouter(tags=["pages"])


def wants_html(accept: str) -> bool:
    html = plain = 0.0
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if media == "text/html":
            html = max(html, quality)
        elif media in ("text/plain", "text/*", "*/*"):
            plain = max(plain, quality)
    return html > 0 and html >= plain


@router.get(
    "/",
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "The page for browsers; the demo text for everyone else",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        429: {"description": "Too many unauthenticated requests from this address"},
    },
)
async def home(request: Request, page: ThePage) -> Response:
    """The chat page (Accept: text/html) or the demo text, streamed a character at a time."""
    if wants_html(request.headers.get("accept", "")):
        return HTMLResponse(page.html, headers=page.headers)
    await spend_address_budget(request)  # seconds of streaming for anyone who asks
    return StreamingResponse(
        plain_text(page.delay_scale),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Vary": "Accept"},
    )
