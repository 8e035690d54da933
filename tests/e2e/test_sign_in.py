"""Signing in on the page with a real OpenID provider (`oidc-provider` from npm), through its
own login and consent pages, in Chromium: chat, reload, a renewed token, sign out."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.demo_text import demo_reply
from tests.support.oidc import API_AUDIENCE, PAGE_CLIENT, OidcProvider, running_oidc_provider
from tests.support.service import Service, free_port, running_service
from tests.support.tokens import bearer

from .conftest import OpenChat


@pytest.fixture(scope="module")
def signed(request: pytest.FixtureRequest) -> Iterator[tuple[OidcProvider, Service]]:
    port = free_port()
    page_url = f"http://127.0.0.1:{port}/"
    # Access tokens live 5 s: the page renews them (refresh token) as they go.
    with running_oidc_provider([page_url], access_token_ttl=5) as provider:
        env = {
            "CHAT_OIDC_ISSUER": provider.issuer,
            "CHAT_OIDC_CLIENT_ID": PAGE_CLIENT,
            "CHAT_JWT_AUDIENCE": API_AUDIENCE,
            "CHAT_OIDC_SCOPES": "openid profile offline_access",
            "CHAT_JWT_SECRET": "",
            "CHAT_DEMO_DELAY_SCALE": "0",
            "CHAT_CACHE_TTL": "0",
        }
        with running_service(env, workers=1, port=port) as svc:
            yield provider, svc


def _sign_in_at_the_provider(page, name: str) -> None:  # type: ignore[no-untyped-def]
    page.locator('input[name="login"]').fill(name)
    page.locator('input[name="password"]').fill("any")
    page.locator('button[type="submit"]').click()
    page.locator('button[type="submit"]').click()  # the consent page: Continue


def test_sign_in_chat_reload_renew_and_sign_out(
    open_chat: OpenChat, signed: tuple[OidcProvider, Service]
) -> None:
    provider, svc = signed
    chat = open_chat(base_url=svc.url, auth=None, navigate=False)
    page = chat.page
    page.goto(f"{svc.url}/")
    expect(page).to_have_url(re.compile(re.escape(provider.issuer)))  # left for the provider
    _sign_in_at_the_provider(page, "alice")
    expect(page.locator("#userName")).to_have_text("Signed in as Alice")
    expect(page.locator("#tokenButton")).to_be_hidden()
    assert "code=" not in page.url  # the code is gone from the address bar
    assert page.evaluate("localStorage.length") == 0  # tokens stay out of localStorage

    chat.send("hello from alice")
    expect(chat.wait_for_reply().locator(".content")).to_have_text(demo_reply("hello from alice"))
    chat.screenshot("signed-in-desktop")

    # The access token lives 5 s; the page renews it with the refresh token, and the
    # conversation goes on with the new one.
    with page.expect_request(
        lambda r: r.url.startswith(provider.issuer) and r.method == "POST"
        and "refresh_token" in (r.post_data or "")
    ):  # fmt: skip
        pass
    chat.send("still here")
    expect(chat.wait_for_reply().locator(".content")).to_have_text(demo_reply("still here"))
    token = page.evaluate("sessionStorage.getItem('chat-service.token')")
    conversation = page.evaluate(
        "JSON.parse(sessionStorage.getItem('chat-service.active')).conversationId"
    )
    history = httpx.get(f"{svc.url}/conversations/{conversation}", headers=bearer(token))
    assert [m["content"] for m in history.json()["messages"] if m["role"] == "user"] == [
        "hello from alice",
        "still here",
    ]

    page.reload()
    expect(page.locator("#userName")).to_have_text("Signed in as Alice")

    page.locator("#signOutButton").click()
    page.locator('button[type="submit"]', has_text=re.compile("sign", re.I)).first.click()
    # Signed out at the provider too: back on the page, it sends us to sign in again.
    expect(page.locator('input[name="login"]')).to_be_visible()
