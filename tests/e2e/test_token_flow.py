"""The bearer token: asked for when missing, asked for again when the service refuses it."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.support.demo_text import demo_reply

from .chat_page import fresh_token
from .conftest import OpenChat


def test_a_refused_token_brings_up_the_dialog_and_a_good_one_sends_the_message(
    open_chat: OpenChat,
) -> None:
    chat = open_chat(auth="storage", stored_token="not-a-valid-token", allowed_statuses=(401,))
    page = chat.page
    dialog = page.locator("#tokenDialog")
    expect(dialog).to_be_hidden()  # a stored token is trusted until the service says no

    chat.send("hello after a 401")

    expect(dialog).to_be_visible()
    expect(page.locator("#tokenDialogError")).to_contain_text("did not accept")
    expect(page.locator("#tokenInput")).to_be_focused()
    assert page.evaluate("sessionStorage.getItem('chat-service.token')") is None
    good = fresh_token()
    page.locator("#tokenInput").fill(good)
    page.locator("#tokenInput").press("Enter")

    expect(dialog).to_be_hidden()
    reply = chat.wait_for_reply()
    expect(reply.locator(".content")).to_have_text(demo_reply("hello after a 401"))
    expect(reply.locator(".error-text")).to_have_count(0)
    expect(page.locator(".message.user")).to_have_count(1)  # resent, not sent twice
    assert page.evaluate("sessionStorage.getItem('chat-service.token')") == good


def test_without_a_token_the_dialog_opens_and_cancelling_it_sends_nothing(
    open_chat: OpenChat,
) -> None:
    chat = open_chat(auth=None)
    page = chat.page
    chat_requests: list[str] = []
    page.on("request", lambda r: chat_requests.append(r.url) if r.url.endswith("/chat") else None)

    expect(page.locator("#tokenDialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#tokenDialog")).to_be_hidden()
    chat.send("no token")
    expect(page.locator("#tokenDialog")).to_be_visible()
    page.locator("#tokenCancel").click()

    reply = chat.wait_for_reply()
    expect(reply.locator(".error-text")).to_contain_text("no access token")
    assert chat_requests == []


def test_an_empty_token_is_not_accepted_by_the_dialog(open_chat: OpenChat) -> None:
    chat = open_chat(auth=None)
    page = chat.page

    page.locator("#tokenSave").click()

    expect(page.locator("#tokenDialog")).to_be_visible()
    expect(page.locator("#tokenDialogError")).to_have_text("Enter a token.")
    page.locator("#tokenInput").fill(f"Bearer {fresh_token()}")  # the whole header, pasted
    page.locator("#tokenSave").click()
    expect(page.locator("#tokenDialog")).to_be_hidden()
    chat.send("pasted with Bearer")
    expect(chat.wait_for_reply().locator(".content")).to_contain_text("You said: pasted")
