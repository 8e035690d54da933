"""The chat page: its HTML (static/index.html, served from the package or the checkout),
the headers it goes out with (its Content-Security-Policy), and the demo text's pacing:
what `GET /` answers (routes/pages.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PACKAGE_DIR = Path(__file__).resolve().parent
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


@dataclass(frozen=True, slots=True)
class Page:
    """`GET /`'s two answers: the page and its headers, and the demo text's pacing."""

    html: bytes
    headers: dict[str, str]
    delay_scale: float


def load_page(oidc_issuer: str | None, delay_scale: float) -> Page:
    index = STATIC_DIR / "index.html"
    html = index.read_bytes() if index.is_file() else PLACEHOLDER
    return Page(html, page_headers(oidc_issuer), delay_scale)
