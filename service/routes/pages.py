"""`GET /`: the chat page for browsers, the demo text stream for curl.

The choice follows the Accept header (RFC 9110 §12.5.1): the page only when `text/html` is
asked for explicitly and ranks at least as high as `text/plain`, so `curl` (`*/*`) gets the
stream of the example and every browser gets HTML.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from ..backends.demo import plain_text
from ..deps import AppServices, spend_address_budget

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# A wheel carries static/ inside the package (pyproject maps it to `service.static`); a
# source checkout, editable install included, serves the repository's own static/.
STATIC_DIR = next(
    (d for d in (PACKAGE_DIR / "static", PACKAGE_DIR.parent / "static") if d.is_dir()),
    PACKAGE_DIR / "static",
)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src {connect}; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def page_headers(oidc_issuer: str | None = None) -> dict[str, str]:
    """The page's headers. Its scripts may reach this service, and with CHAT_OIDC_ISSUER
    exactly that provider's origin too (discovery, tokens, keys), nothing else."""
    connect = "'self'"
    if oidc_issuer:
        parts = urlsplit(oidc_issuer)
        connect += f" {parts.scheme}://{parts.netloc}"
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY.format(connect=connect),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "Vary": "Accept",
    }


PLACEHOLDER = b"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>chat-service</title></head><body><h1>chat-service</h1>
<p>The chat page is not installed. The API is at <a href="/docs">/docs</a>.</p></body></html>"""

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


def load_page() -> bytes:
    index = STATIC_DIR / "index.html"
    return index.read_bytes() if index.is_file() else PLACEHOLDER


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
async def home(request: Request, services: AppServices) -> Response:
    """The chat page (Accept: text/html) or the demo text, streamed a character at a time."""
    if wants_html(request.headers.get("accept", "")):
        return HTMLResponse(services.page, headers=services.page_headers)
    await spend_address_budget(request)  # seconds of streaming for anyone who asks
    settings = services.settings
    return StreamingResponse(
        plain_text(settings.demo_delay_scale),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Vary": "Accept"},
    )
