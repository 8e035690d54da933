"""The page's conversation list in Chromium, against the real service in front of an
OpenAI-compatible upstream (which says how many earlier messages it was sent): listed after
a reload and in a new tab, one continued with its history sent upstream, one deleted (gone
for the other tab too), another user's never listed. Screenshots at 1280 and 390 px wide,
in English and Chinese."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.fake_openai import FakeOpenAI, running_fake_openai
from tests.support.service import Service, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer

from .chat_page import PHONE, ChatPage, fresh_token
from .conftest import OpenChat

TITLES = ".conversation-open"


@pytest.fixture(scope="module")
def upstream_service() -> Iterator[tuple[Service, FakeOpenAI]]:
    with running_fake_openai() as fake:
        env = {
            "CHAT_BACKEND": "openai",
            "CHAT_OPENAI_BASE_URL": fake.base_url,
            "CHAT_OPENAI_MODEL": "history-model",
            "CHAT_CACHE_TTL": "0",
            "CHAT_RATE_LIMIT": "100/minute",  # one test makes 21 conversations
        }
        with running_service(env, workers=1) as svc:
            yield svc, fake


def _reply(chat: ChatPage, text: str) -> str:
    chat.send(text)
    reply = chat.wait_for_reply()
    expect(reply.locator(".error-text")).to_have_count(0)
    return str(reply.locator(".content").inner_text())


def test_conversations_listed_continued_and_deleted_across_tabs(
    open_chat: OpenChat, upstream_service: tuple[Service, FakeOpenAI]
) -> None:
    svc, _ = upstream_service
    token = fresh_token()
    chat = open_chat(base_url=svc.url, auth="storage", stored_token=token)
    page = chat.page
    expect(page.locator("#historyEmpty")).to_be_visible()

    assert _reply(chat, "first topic") == "Hello from the model (0 earlier)"
    page.locator("#newChatButton").click()
    assert _reply(chat, "second topic") == "Hello from the model (0 earlier)"
    expect(page.locator(TITLES)).to_have_text(["second topic", "first topic"])
    expect(page.locator(f"{TITLES}[aria-current='true']")).to_have_text("second topic")

    # A reload shows the list and the open conversation again.
    page.reload()
    expect(page.locator(TITLES)).to_have_text(["second topic", "first topic"])
    expect(page.locator(".message.user")).to_have_text(["second topic"])

    # Another tab of the same person lists them too.
    other = ChatPage(page.context.new_page(), svc.url, set())
    other.watch()
    other.open()
    expect(other.page.locator(TITLES)).to_have_text(["second topic", "first topic"])

    # Open the first one and continue it: its history goes upstream with the new message.
    page.locator(TITLES, has_text="first topic").click()
    expect(page.locator(".message.user")).to_have_text(["first topic"])
    expect(page.locator(".message.assistant:not(.welcome) .content")).to_have_text(
        ["Hello from the model (0 earlier)"]
    )
    assert _reply(chat, "more on it") == "Hello from the model (2 earlier)"
    expect(page.locator(TITLES)).to_have_text(["first topic", "second topic"])

    # Delete the second one, after saying yes in the page's own dialog.
    page.locator(".conversation-item", has_text="second topic").locator(
        ".conversation-delete"
    ).click()
    dialog = page.locator("#deleteDialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("second topic")
    page.locator("#deleteConfirm").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(TITLES)).to_have_text(["first topic"])
    other.page.reload()
    expect(other.page.locator(TITLES)).to_have_text(["first topic"])
    other.assert_clean()

    # Someone else sees none of them.
    stranger = open_chat(base_url=svc.url, auth="storage", stored_token=fresh_token())
    expect(stranger.page.locator("#historyEmpty")).to_be_visible()
    expect(stranger.page.locator(TITLES)).to_have_count(0)


def test_cancelling_the_delete_dialog_keeps_the_conversation(
    open_chat: OpenChat, upstream_service: tuple[Service, FakeOpenAI]
) -> None:
    svc, _ = upstream_service
    chat = open_chat(base_url=svc.url, auth="storage", stored_token=fresh_token())
    _reply(chat, "keep me")
    page = chat.page
    page.locator(".conversation-delete").click()
    page.keyboard.press("Escape")
    expect(page.locator("#deleteDialog")).to_be_hidden()
    expect(page.locator(".conversation-delete")).to_be_focused()
    page.reload()
    expect(page.locator(TITLES)).to_have_text(["keep me"])


def test_a_reload_shows_the_open_conversation_even_past_the_lists_first_page(
    open_chat: OpenChat, upstream_service: tuple[Service, FakeOpenAI]
) -> None:
    """Twenty newer conversations (made elsewhere, by the API) push the open one off the
    list's first page; a reload still shows its messages."""
    svc, _ = upstream_service
    token = fresh_token()
    chat = open_chat(base_url=svc.url, auth="storage", stored_token=token)
    _reply(chat, "the open one")
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        for n in range(20):
            body = {"message": f"newer {n}", "conversation_id": f"newer-{n}"}
            made = stream_chat(http, "POST", "/chat", json=body, headers=bearer(token))
            assert made.status == 200 and made.names[-1] == "done"
    page = chat.page
    page.reload()
    expect(page.locator(TITLES)).to_have_count(20)
    expect(page.locator(TITLES, has_text="the open one")).to_have_count(0)
    expect(page.locator(".message.user")).to_have_text(["the open one"])
    expect(page.locator(".message.assistant:not(.welcome) .content")).to_have_text(
        ["Hello from the model (0 earlier)"]
    )
    assert _reply(chat, "still here") == "Hello from the model (2 earlier)"


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_list_on_wide_and_narrow_screens(
    open_chat: OpenChat,
    upstream_service: tuple[Service, FakeOpenAI],
    locale: str,
    size: str,
) -> None:
    svc, _ = upstream_service
    viewport = PHONE if size == "phone" else {"width": 1280, "height": 800}
    chat = open_chat(
        base_url=svc.url,
        auth="storage",
        stored_token=fresh_token(),
        viewport=viewport,
        locale=locale,
    )
    page = chat.page
    for text in ("Plan the trip", "旅行计划", "A question about Redis"):
        page.locator("#newChatButton").click()
        _reply(chat, text)
    toggle = page.locator("#historyButton")
    if size == "phone":
        expect(page.locator("#sidebar")).to_be_hidden()  # a drawer, closed
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
    else:
        expect(toggle).to_be_hidden()  # the list is always there
    expect(page.locator("#sidebar")).to_be_in_viewport(ratio=1)  # the drawer slid in whole
    expect(page.locator("#historyTitle")).to_have_text(
        "Conversations" if locale == "en-US" else "会话"
    )
    expect(page.locator(TITLES)).to_have_count(3)
    chat.screenshot(f"history-{size}-{locale}")
    if size == "phone":
        page.keyboard.press("Escape")
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(toggle).to_be_focused()
