"""Chinese or English by the browser's language; usable by keyboard and with a screen reader."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.support.demo_text import demo_reply

from .chat_page import PHONE
from .conftest import OpenChat


def test_the_ui_is_chinese_under_a_zh_cn_locale(open_chat: OpenChat) -> None:
    chat = open_chat(locale="zh-CN", viewport=PHONE)
    page = chat.page

    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    expect(page).to_have_title("AI 聊天")
    expect(page.locator("#sendButton")).to_have_text("发送")
    expect(page.locator("#newChatButton")).to_have_text("新对话")
    expect(page.locator("#messageInput")).to_have_attribute("placeholder", "输入消息...")
    expect(page.locator(".message.welcome")).to_have_text("你好！我是 AI 助手，今天想聊什么呢？")
    expect(page.get_by_role("textbox", name="消息")).to_be_visible()

    chat.send("你好")
    expect(chat.reply.locator(".thinking summary")).to_be_visible()
    expect(page.locator("#stopButton")).to_have_text("停止")
    reply = chat.wait_for_reply()
    expect(reply.locator(".thinking summary")).to_have_text("思考了 4 步")
    expect(reply.locator(".content")).to_have_text(demo_reply("你好"))
    expect(page.locator("#announcer")).to_have_text("回复：" + demo_reply("你好"))
    chat.screenshot("phone-zh-reply")


def test_english_is_the_default_for_other_languages(open_chat: OpenChat) -> None:
    chat = open_chat(locale="de-DE")

    assert chat.page.evaluate("document.documentElement.lang") == "en"
    expect(chat.page.locator("#sendButton")).to_have_text("Send")


def test_controls_are_named_for_screen_readers_and_the_finished_reply_is_announced(
    open_chat: OpenChat,
) -> None:
    chat = open_chat()
    page = chat.page

    box = page.get_by_role("textbox", name="Message")
    expect(box).to_be_focused()
    expect(box).to_have_accessible_description("Enter to send, Shift+Enter for a new line")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    expect(page.get_by_role("main", name="Conversation")).to_be_visible()
    announcer = page.locator("#announcer")
    expect(announcer).to_have_attribute("aria-live", "polite")

    chat.send("announce me")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(chat.reply).to_have_attribute("aria-busy", "true")
    expect(announcer).to_have_text("")  # nothing read out character by character
    chat.wait_for_reply()

    expect(announcer).to_have_text("Reply: " + demo_reply("announce me"))
    expect(page.get_by_role("article", name="You")).to_have_text("announce me")
    expect(page.get_by_role("article", name="Assistant").last).to_contain_text("You said")


def test_the_keyboard_alone_can_send_stop_and_start_over(open_chat: OpenChat) -> None:
    chat = open_chat()
    page = chat.page

    page.keyboard.type("typed " + "and typed " * 30)
    page.keyboard.press("Enter")
    expect(chat.reply.locator(".content")).to_contain_text("You said")
    page.keyboard.press("Escape")  # stops the reply from the message box
    expect(chat.reply).to_have_class(re.compile(r"\bstopped\b"))

    # Backwards from Send: the message box, the reply's thinking summary (Enter opens it),
    # then the header's New chat.
    expect(page.locator("#messageInput")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#sendButton")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    summary = chat.reply.locator(".thinking summary")
    expect(summary).to_be_focused()
    page.keyboard.press("Enter")
    expect(chat.reply.locator(".thinking li").first).to_be_visible()
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#newChatButton")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_have_count(1)
    expect(page.locator("#messageInput")).to_be_focused()
