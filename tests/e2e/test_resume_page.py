"""The page keeps a reply through a dropped connection and through a reload, in Chromium:
the bubble ends complete, once, with no text twice."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.support.cut_proxy import cut_proxy
from tests.support.demo_text import demo_reply
from tests.support.service import Service

from .conftest import OpenChat


def _resumed(service: Service) -> list[dict[str, object]]:
    return [r for r in service.records() if r.get("resumed")]


def test_a_dropped_connection_mid_reply_reconnects_and_continues_the_same_bubble(
    open_chat: OpenChat, e2e_service: Service
) -> None:
    message = "drop me halfway"
    with cut_proxy(e2e_service.port) as proxy:
        chat = open_chat(base_url=proxy.url)
        chat.send(message)
        expect(chat.reply.locator(".content")).to_contain_text("You said")
        resumed_before = len(_resumed(e2e_service))
        proxy.cut()  # the network drops the reply's connection
        expect(chat.reply.locator(".reconnecting")).to_be_visible()
        expect(chat.reply.locator(".cursor")).to_have_count(0, timeout=20_000)
    expect(chat.reply.locator(".content")).to_have_text(demo_reply(message))
    expect(chat.reply.locator(".reconnecting")).to_have_count(0)
    expect(chat.reply.locator(".error-text")).to_have_count(0)
    expect(chat.page.locator(".message.assistant:not(.welcome)")).to_have_count(1)
    assert len(_resumed(e2e_service)) > resumed_before
    # Chromium reports the cut itself, the one error this test makes on purpose.
    cut = "Failed to load resource: net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    assert cut in chat.console_errors
    chat.console_errors.remove(cut)


def test_a_reload_mid_reply_picks_the_reply_up_again(
    open_chat: OpenChat, e2e_service: Service
) -> None:
    message = "reload me halfway"
    chat = open_chat()
    chat.send(message)
    expect(chat.reply.locator(".content")).to_contain_text("You said")
    chat.page.reload()
    expect(chat.page.locator(".message.user")).to_have_text(message)
    expect(chat.reply.locator(".cursor")).to_have_count(0, timeout=20_000)
    expect(chat.reply.locator(".content")).to_have_text(demo_reply(message))
    expect(chat.reply.locator(".error-text")).to_have_count(0)
    expect(chat.page.locator(".message.assistant:not(.welcome)")).to_have_count(1)
    expect(chat.reply.locator(".thinking-steps li")).to_have_count(4)


def test_after_a_finished_reply_a_reload_replays_nothing(open_chat: OpenChat) -> None:
    chat = open_chat()
    chat.send("all done")
    expect(chat.reply.locator(".cursor")).to_have_count(0, timeout=20_000)
    resumes: list[str] = []
    chat.page.on("request", lambda r: resumes.append(r.url) if "/chat/streams/" in r.url else None)
    chat.page.reload()
    expect(chat.page.locator("#sendButton")).to_be_enabled()
    # The conversation is shown again from its history, once, finished: no stream replayed.
    expect(chat.page.locator(".message.user")).to_have_text(["all done"])
    replies = chat.page.locator(".message.assistant:not(.welcome)")
    expect(replies).to_have_count(1)
    expect(replies).to_have_attribute("aria-busy", "false")
    expect(replies.locator(".cursor")).to_have_count(0)
    assert resumes == []
