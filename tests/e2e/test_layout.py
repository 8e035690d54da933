"""The page at desktop and phone widths: nothing overflows sideways, every control is on screen.

Each test saves screenshots to tests/artifacts/ (not committed) for a person to look at.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Route, expect

from .chat_page import (
    DESKTOP,
    PHONE,
    SMALL_PHONE,
    ChatPage,
    thinking_then,
)
from .conftest import OpenChat
from .test_rendering import MARKDOWN

SIZES = {"desktop": DESKTOP, "phone": PHONE, "phone360": SMALL_PHONE}
CONTROLS = ["#messageInput", "#sendButton", "#newChatButton", "#tokenButton"]


def assert_fits(chat: ChatPage) -> None:
    """No sideways scrolling, and every control inside the viewport."""
    page = chat.page
    width = page.viewport_size["width"]
    height = page.viewport_size["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for selector in CONTROLS:
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, selector
    for bubble in page.locator(".message").all():
        box = bubble.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width


@pytest.mark.parametrize("size", SIZES)
def test_a_conversation_fits_the_screen(open_chat: OpenChat, size: str) -> None:
    chat = open_chat(viewport=SIZES[size])
    chat.screenshot(f"{size}-empty")

    chat.send("Hello! Does this fit on a small screen? " + "Long words: " + "x" * 80)
    expect(chat.reply.locator(".thinking summary")).to_be_visible()
    chat.screenshot(f"{size}-thinking")
    expect(chat.reply.locator(".content")).to_contain_text("You said")
    chat.screenshot(f"{size}-streaming")
    chat.wait_for_reply()
    assert_fits(chat)
    chat.screenshot(f"{size}-reply")

    def answer(route: Route) -> None:
        route.fulfill(
            status=200, content_type="text/event-stream", body=thinking_then(MARKDOWN + WIDE_CODE)
        )

    chat.page.route("**/chat", answer)
    chat.send("markdown please")
    chat.wait_for_reply()
    assert_fits(chat)
    chat.screenshot(f"{size}-markdown")


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_token_dialog_fits_the_screen(open_chat: OpenChat, size: str) -> None:
    chat = open_chat(viewport=SIZES[size], auth=None)

    dialog = chat.page.locator("#tokenDialog")
    expect(dialog).to_be_visible()
    box = dialog.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= SIZES[size]["width"]
    chat.screenshot(f"{size}-token-dialog")


# One line far wider than a phone: the code block must scroll, not the page.
WIDE_CODE = (
    "\n```bash\n"
    "curl -N -X POST http://127.0.0.1:8000/chat -H 'Authorization: Bearer $TOKEN' "
    "-H 'Content-Type: application/json' -d '{\"message\":\"hello\"}'\n"
    "```\n"
)
