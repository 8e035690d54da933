"""CORS: the configured origin may call with a bearer token; others get no CORS headers."""

from __future__ import annotations

import httpx

from tests.support.tokens import bearer

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.com"


def test_preflight_from_an_allowed_origin(client: httpx.Client) -> None:
    response = client.options(
        "/chat",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "last-event-id" in allowed_headers  # to resume a stream from another origin
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in response.headers


def test_allowed_origin_can_read_the_exposed_headers(client: httpx.Client) -> None:
    with client.stream("GET", "/chat/hi", headers={**bearer(), "Origin": ALLOWED}) as response:
        exposed = response.headers["access-control-expose-headers"].lower()

    assert response.headers["access-control-allow-origin"] == ALLOWED
    for name in (
        "x-request-id",
        "x-cache",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-stream-id",
        "ratelimit",
        "ratelimit-policy",
    ):
        assert name in [h.strip() for h in exposed.split(",")]


def test_other_origins_get_no_cors_headers(client: httpx.Client) -> None:
    preflight = client.options(
        "/chat", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"}
    )
    simple = client.get("/healthz", headers={"Origin": OTHER})

    for response in (preflight, simple):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    assert preflight.status_code == 403
