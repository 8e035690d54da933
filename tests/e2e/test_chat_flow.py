"""Chatting with the real service: sending, streaming, stopping, new conversations, scrolling."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable

from playwright.sync_api import expect

from tests.support.demo_text import THINKING, demo_reply
from tests.support.service import Service

from .chat_page import metric
from .conftest import OpenChat

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# Records, in order, when the newest reply gained a thinking step and when it first showed
# text; and any moment it showed streaming text without the cursor.
TIMELINE = """
() => {
  window.timeline = [];
  let steps = 0;
  let text = false;
  new MutationObserver(() => {
    const reply = [...document.querySelectorAll(".message.assistant")].at(-1);
    if (!reply) return;
    const now = reply.querySelectorAll(".thinking li").length;
    for (; steps < now; steps++) window.timeline.push("thinking");
    const shown = reply.querySelector(".content")?.textContent.trim();
    if (!text && shown) {
      text = true;
      window.timeline.push("content");
    }
    const streaming = reply.getAttribute("aria-busy") === "true";
    if (shown && streaming && !reply.querySelector(".cursor")) window.timeline.push("no cursor");
  }).observe(document.getElementById("messages"), {
    subtree: true,
    childList: true,
    characterData: true,
  });
}
"""


def test_enter_sends_and_the_reply_streams_thinking_then_text(open_chat: OpenChat) -> None:
    chat = open_chat()
    page = chat.page
    page.evaluate(TIMELINE)

    chat.send("hello there")

    expect(page.locator(".message.user").last).to_have_text("hello there")
    expect(page.locator("#messageInput")).to_have_value("")
    expect(page.locator("#sendButton")).to_be_disabled()
    expect(page.locator("#stopButton")).to_be_visible()
    # While waiting, the thinking section names the current step, and the cursor blinks.
    expect(chat.reply.locator(".thinking summary")).to_have_text(
        re.compile("|".join(map(re.escape, THINKING)))
    )
    expect(chat.reply.locator(".cursor")).to_have_count(1)
    expect(chat.reply.locator(".content")).to_contain_text("You said:")

    reply = chat.wait_for_reply()
    expect(reply.locator(".content")).to_have_text(
        "You said: hello there. This is a complete AI chat demo, with streaming output!"
    )
    expect(reply.locator(".cursor")).to_have_count(0)
    expect(reply.locator(".thinking summary")).to_have_text("Thought in 4 steps")
    expect(reply.locator(".thinking")).not_to_have_attribute("open", "")
    expect(reply.locator(".thinking li")).to_have_text(THINKING)
    expect(page.locator("#sendButton")).to_be_enabled()
    expect(page.locator("#stopButton")).to_be_hidden()
    assert page.evaluate("window.timeline") == ["thinking"] * 4 + ["content"]


def test_the_token_in_the_url_is_kept_and_taken_out_of_the_address_bar(open_chat: OpenChat) -> None:
    chat = open_chat()

    assert "#token" not in chat.page.url
    assert chat.page.evaluate("sessionStorage.getItem('chat-service.token')").count(".") == 2
    chat.page.reload()
    chat.send("still signed in after a reload")
    expect(chat.wait_for_reply().locator(".content")).to_contain_text("You said: still signed in")


def test_shift_enter_makes_a_new_line_and_enter_sends_both(open_chat: OpenChat) -> None:
    chat = open_chat()
    box = chat.page.locator("#messageInput")

    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")

    expect(box).to_have_value("first line\nsecond line")
    expect(chat.page.locator(".message.user")).to_have_count(0)
    box.press("Enter")
    expect(chat.page.locator(".message.user")).to_have_text("first line\nsecond line")
    chat.wait_for_reply()


def test_stop_stops_the_generation_itself(open_chat: OpenChat, e2e_service: Service) -> None:
    """Stop asks the server to stop the generation (DELETE /chat/streams/{id}): the reply
    is not left running for a reader to come back to."""
    chat = open_chat()
    message = "please stop me " + "x" * 300  # a reply of about 3 s at the test pacing

    chat.send(message)
    expect(chat.reply.locator(".content")).to_contain_text("You said")
    assert metric(e2e_service, "chat_streams_active") == 1
    cancelled_before = count_outcomes(e2e_service.lines, "cancelled")
    chat.page.locator("#stopButton").click()

    expect(chat.reply).to_have_class(re.compile(r"\bstopped\b"))
    expect(chat.reply.locator(".stopped-text")).to_have_text("Stopped.")
    expect(chat.reply.locator(".cursor")).to_have_count(0)
    expect(chat.page.locator("#sendButton")).to_be_enabled()
    expect(chat.page.locator("#stopButton")).to_be_hidden()
    shown = chat.reply.locator(".content").inner_text()
    assert 0 < len(shown) < len(demo_reply(message))
    wait_until(lambda: metric(e2e_service, "chat_streams_active") == 0, "the stream to close")
    e2e_service.wait_for(
        lambda lines: count_outcomes(lines, "cancelled") > cancelled_before,
        timeout=5,
        what="a generation that ended cancelled",
    )


def test_new_chat_clears_the_messages_and_starts_a_new_conversation(open_chat: OpenChat) -> None:
    chat = open_chat()
    bodies: list[dict[str, str]] = []
    chat.page.on(
        "request",
        lambda request: (
            bodies.append(request.post_data_json) if request.url.endswith("/chat") else None
        ),
    )

    chat.send("one")
    chat.wait_for_reply()
    chat.send("two")
    chat.wait_for_reply()
    chat.page.locator("#newChatButton").click()

    expect(chat.page.locator(".message")).to_have_count(1)  # the welcome
    expect(chat.page.locator(".message.welcome")).to_be_visible()
    expect(chat.page.locator("#messageInput")).to_be_focused()
    chat.send("three")
    chat.wait_for_reply()
    assert [body["message"] for body in bodies] == ["one", "two", "three"]
    first, second, third = (body["conversation_id"] for body in bodies)
    assert UUID.match(first) and UUID.match(third)
    assert first == second != third


def test_new_chat_during_a_reply_then_a_reload_asks_for_nothing_missing(
    open_chat: OpenChat,
) -> None:
    """New chat while a reply streams stops it; the new conversation has no turns yet, so a
    reload must not ask the server for it (a 404, logged by the browser as an error)."""
    chat = open_chat()
    missing: list[str] = []
    chat.page.on(
        "response",
        lambda response: missing.append(response.url) if response.status == 404 else None,
    )
    chat.send("cut short")
    expect(chat.page.locator("#stopButton")).to_be_visible()  # the reply is streaming
    chat.page.locator("#newChatButton").click()
    expect(chat.page.locator("#sendButton")).to_be_enabled()  # the old reply has ended
    chat.page.reload()
    expect(chat.page.locator(".message.welcome")).to_be_visible()
    chat.send("after the reload")
    chat.wait_for_reply()
    expect(chat.page.locator(".message.user")).to_have_text(["after the reload"])
    assert missing == []


def test_auto_scroll_follows_the_reply_until_the_reader_scrolls_up(open_chat: OpenChat) -> None:
    chat = open_chat(viewport={"width": 1000, "height": 600})
    page = chat.page
    messages = page.locator("#messages")
    distance_from_bottom = "el => el.scrollHeight - el.scrollTop - el.clientHeight"

    chat.send("fill the screen " + " ".join(["words"] * 50))
    chat.wait_for_reply()
    assert messages.evaluate(distance_from_bottom) < 2  # followed the reply to its end

    chat.send("a long one to read " + uuid.uuid4().hex + " and more" * 30)
    expect(chat.reply.locator(".content")).to_contain_text("You said")
    messages.hover()
    page.mouse.wheel(0, -600)
    expect(page.locator("#scrollButton")).to_be_visible()
    held = messages.evaluate("el => el.scrollTop")
    page.wait_for_timeout(500)  # more text arrives meanwhile
    assert messages.evaluate("el => el.scrollTop") == held

    chat.wait_for_reply()
    assert messages.evaluate(distance_from_bottom) > 100
    page.locator("#scrollButton").click()
    assert messages.evaluate(distance_from_bottom) < 2
    expect(page.locator("#scrollButton")).to_be_hidden()


def count_outcomes(lines: list[str], outcome: str) -> int:
    """Log lines (stream summaries, generations' ends) with this outcome."""
    count = 0
    for line in list(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        count += isinstance(record, dict) and record.get("outcome") == outcome
    return count


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
