"""CORS for the exact origins in CHAT_CORS_ORIGINS; every other origin gets no CORS header.

Starlette's CORSMiddleware answers a disallowed preflight with `Access-Control-Allow-Methods`
and friends still set; the contract says other origins get no CORS headers at all, so this
small pure-ASGI version refuses them bare. Bearer tokens, not cookies, carry identity, so
credentials are never allowed (Fetch standard, "CORS protocol and credentials").
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = b"GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = b"Authorization, Content-Type, Cache-Control, X-Request-ID, Last-Event-ID"
EXPOSE_HEADERS = (
    b"X-Request-ID, X-Cache, X-Stream-ID, Retry-After, X-RateLimit-Limit, "
    b"X-RateLimit-Remaining, X-RateLimit-Reset, RateLimit, RateLimit-Policy, Server-Timing, "
    # OpenAI's own, on /v1 (completions.limits).
    b"x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)
MAX_AGE = b"600"


class CORS:
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = frozenset(origin.encode("latin-1") for origin in origins)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not `async`: when there is nothing to do, hand back the inner app's coroutine
        # itself, so an open stream does not keep one more frame alive for its whole life.
        if scope["type"] != "http" or not self.origins:
            return self.app(scope, receive, send)
        return self._cors(scope, receive, send)

    async def _cors(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = preflight = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = value
        allowed = origin in self.origins
        if scope["method"] == "OPTIONS" and origin is not None and preflight is not None:
            await self._preflight(send, origin if allowed else None)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        assert origin is not None

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", EXPOSE_HEADERS),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: bytes | None) -> None:
        headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
        if origin is not None:
            headers += [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-allow-headers", ALLOW_HEADERS),
                (b"access-control-max-age", MAX_AGE),
            ]
        await send(
            {"type": "http.response.start", "status": 204 if origin else 403, "headers": headers}
        )
        await send({"type": "http.response.body", "body": b""})
