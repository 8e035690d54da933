"""Signing in with the organisation's OpenID provider: a real one (`oidc-provider` from npm,
tests/peers/oidc-provider.mjs), whose tokens the service verifies through the keys its
discovery document names, for the page's client id."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.oidc import (
    OTHER_CLIENT,
    PAGE_CLIENT,
    OidcProvider,
    running_oidc_provider,
    sign_in,
)
from tests.support.service import Service, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer

REDIRECT = "http://127.0.0.1:9/signed-in"  # never followed here: the code is read from it


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with running_oidc_provider([REDIRECT], access_token_ttl=2) as made:
        yield made


@pytest.fixture(scope="module")
def svc(provider: OidcProvider) -> Iterator[Service]:
    env = {
        "CHAT_OIDC_ISSUER": provider.issuer,
        "CHAT_OIDC_CLIENT_ID": PAGE_CLIENT,
        "CHAT_JWT_SECRET": "",  # the provider's keys verify, no secret of our own
        "CHAT_JWT_LEEWAY": "0",
        "CHAT_CACHE_TTL": "0",
    }
    with running_service(env, workers=1) as service:
        yield service


def test_the_page_learns_the_provider_and_may_reach_exactly_its_origin(
    svc: Service, provider: OidcProvider
) -> None:
    config = httpx.get(f"{svc.url}/auth/config").json()
    assert config == {
        "oidc": {"issuer": provider.issuer, "client_id": PAGE_CLIENT, "scopes": "openid profile"}
    }
    page = httpx.get(f"{svc.url}/", headers={"Accept": "text/html"})
    policy = page.headers["content-security-policy"]
    assert f"connect-src 'self' {provider.issuer};" in policy
    assert "form-action 'self'" in policy


def test_a_token_the_provider_issued_for_the_page_is_accepted_until_it_expires(
    svc: Service, provider: OidcProvider
) -> None:
    tokens = sign_in(provider.issuer, PAGE_CLIENT, REDIRECT, "alice")
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        stream = stream_chat(
            http, "POST", "/chat", json={"message": "hi", "conversation_id": "mine"},
            headers=bearer(tokens["access_token"]),
        )  # fmt: skip
        assert stream.status == 200 and stream.names[-1] == "done"
        listed = http.get("/conversations", headers=bearer(tokens["access_token"])).json()
        assert [c["id"] for c in listed["conversations"]] == ["mine"]
        time.sleep(2.2)  # the token's own lifetime (2 s, no leeway) is what is under test
        expired = http.get("/conversations", headers=bearer(tokens["access_token"]))
    assert expired.status_code == 401
    assert expired.headers["www-authenticate"].startswith("Bearer")
    access = [r for r in svc.records() if r.get("event") == "stream finished"]
    assert access[-1]["user"] == "alice"


def test_a_token_for_another_application_is_refused(svc: Service, provider: OidcProvider) -> None:
    tokens = sign_in(provider.issuer, OTHER_CLIENT, REDIRECT, "alice")
    response = httpx.get(f"{svc.url}/conversations", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert "audience" in response.json()["detail"]


def test_without_a_provider_the_page_asks_for_a_token() -> None:
    with running_service({}, workers=1) as plain:
        assert httpx.get(f"{plain.url}/auth/config").json() == {"oidc": None}
        page = httpx.get(f"{plain.url}/", headers={"Accept": "text/html"})
        assert "connect-src 'self';" in page.headers["content-security-policy"]
