"""Browser tests of the chat page, against the real service.

Playwright's Python package drives the system's Chromium (Playwright's own browser download
is not used; CHAT_E2E_CHROMIUM points elsewhere). A missing Playwright or Chromium is a
failure, not a skip: `scripts/test.sh` installs both.

Every page a test opens is watched from its first request to the end of the test, and the
test fails if the page logged a console error or threw, opened a dialog (alert/confirm), or
made a request anywhere but the service on 127.0.0.1. HTTP errors a test provokes on purpose
(Chromium logs "Failed to load resource" for a 401 or 429) are declared per page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.support.service import Service, running_service

from .chat_page import CHROMIUM, CHROMIUM_ARGS, DESKTOP, ChatPage, fresh_token

# A reply takes about 0.6 s of thinking and 9 ms a character: slow enough to watch it stream
# and press Stop in the middle, fast enough for a test suite.
DELAY_SCALE = "0.3"


@pytest.fixture(scope="package")
def e2e_service() -> Iterator[Service]:
    """The real service with demo pacing; no cache (replies must stream) and a roomy limit."""
    env = {
        "CHAT_DEMO_DELAY_SCALE": DELAY_SCALE,
        "CHAT_CACHE_TTL": "0",
        "CHAT_RATE_LIMIT": "1000/minute",
    }
    # One worker, as `serve` runs without Redis: a reply's stop or resume must reach the
    # worker that generates it.
    with running_service(env, workers=1) as service:
        yield service


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Package-scoped: Playwright's sync API keeps an asyncio loop running in this thread
    while it is open, and `asyncio.run()` in any later test would refuse to start."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHAT_E2E_CHROMIUM)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


OpenChat = Callable[..., "ChatPage"]


@pytest.fixture
def open_chat(browser: Any, e2e_service: Service) -> Iterator[OpenChat]:
    """Open the chat page in a fresh browser context; checked for cleanliness at the end.

    auth="url" passes a fresh token as #token=..., auth="storage" puts `stored_token` in
    sessionStorage before the page loads, auth=None gives the page no token at all.
    """
    pages: list[ChatPage] = []
    contexts = []

    def open_page(
        *,
        viewport: dict[str, int] = DESKTOP,
        locale: str = "en-US",
        auth: str | None = "url",
        stored_token: str | None = None,
        allowed_statuses: tuple[int, ...] = (),
        navigate: bool = True,
        base_url: str | None = None,
    ) -> ChatPage:
        context = browser.new_context(viewport=viewport, locale=locale)
        contexts.append(context)
        if auth == "storage":
            context.add_init_script(
                f"sessionStorage.setItem('chat-service.token', {stored_token!r});"
            )
        url = base_url or e2e_service.url
        chat = ChatPage(context.new_page(), url, set(allowed_statuses))
        chat.watch()
        pages.append(chat)
        if navigate:
            chat.open(f"#token={fresh_token()}" if auth == "url" else "")
        return chat

    yield open_page
    for context in contexts:
        context.close()
    for chat in pages:
        chat.assert_clean()
