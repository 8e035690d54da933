"""The page under a token budget: it says what is left, and says plainly when it runs out."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.support.service import Service, running_service

from .chat_page import PHONE
from .conftest import OpenChat


@pytest.fixture(scope="module")
def budget_service() -> Iterator[Service]:
    env = {
        "CHAT_DEMO_DELAY_SCALE": "0",
        "CHAT_CACHE_TTL": "0",
        "CHAT_TOKEN_BUDGET": "400/hour",
        "CHAT_MAX_OUTPUT_TOKENS": "150",
    }
    with running_service(env, workers=1) as service:
        yield service


@pytest.mark.parametrize(
    ("locale", "left", "out"),
    [
        ("en-US", r"^{n} of 400 tokens left, renewed at ", "you have used the tokens"),
        ("zh-CN", r"^剩余 {n} / 400 个 token，", "可用的 token 已用完"),
    ],
)
def test_the_page_shows_what_is_left_and_when_the_budget_runs_out(
    open_chat: OpenChat, budget_service: Service, locale: str, left: str, out: str
) -> None:
    chat = open_chat(base_url=budget_service.url, locale=locale, allowed_statuses=(429,))
    status = chat.page.locator("#budgetStatus")
    expect(status).to_have_text(re.compile(left.format(n="400")))
    chat.send("first")
    expect(chat.wait_for_reply().locator(".error-text")).to_have_count(0)
    # The demo's reply and thinking, estimated: some tens of tokens fewer.
    expect(status).to_have_text(re.compile(left.format(n="3[0-9]{2}")))
    for n in range(6):
        chat.send(f"more {n}")
        reply = chat.wait_for_reply()
        if reply.locator(".error-text").count():
            break
    expect(reply.locator(".error-text")).to_contain_text(out)
    # Each turn carries the conversation so far, so each reserves more: a few fit.
    assert n >= 1
    expect(status).to_be_visible()
    chat.screenshot(f"budget-out-{locale}")


def test_without_a_budget_the_page_says_nothing_of_tokens(open_chat: OpenChat) -> None:
    chat = open_chat(viewport=PHONE)
    chat.send("no budget here")
    expect(chat.wait_for_reply().locator(".error-text")).to_have_count(0)
    expect(chat.page.locator("#budgetStatus")).to_be_hidden()
