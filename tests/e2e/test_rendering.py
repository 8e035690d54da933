"""What replies turn into on the page: safe Markdown, highlighted code, and readable errors."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Route, expect

from .chat_page import ChatPage, fresh_token, sse_body, thinking_then
from .conftest import OpenChat

ATTACK = "<img src=x onerror=alert(1)> [x](javascript:alert(1))"

MARKDOWN = """# Title

Some **bold**, *italic* and `inline code`, and a [link](https://example.com/docs).

- one
- two

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"  # a comment
```

| a | b |
|---|---|
| 1 | 2 |
"""


def answer_chat(chat: ChatPage, body: bytes, status: int = 200, **headers: str) -> None:
    """Make /chat answer with `body` (the whole of it at once)."""

    def answer(route: Route) -> None:
        content_type = "text/event-stream" if status == 200 else "application/json"
        route.fulfill(status=status, content_type=content_type, body=body, headers=headers)

    chat.page.route("**/chat", answer)


def install_xss_tripwire(chat: ChatPage) -> None:
    # If anything injected ran, it would most likely call alert(): count calls instead of
    # relying only on the dialog event.
    chat.page.add_init_script(
        "window.__alerts = 0; window.alert = () => { window.__alerts += 1; };"
    )


def test_html_and_a_javascript_link_in_a_reply_render_as_harmless_text(open_chat: OpenChat) -> None:
    """The demo echoes the message, so the attack comes back from the real service."""
    chat = open_chat(navigate=False)
    install_xss_tripwire(chat)
    chat.open(f"#token={fresh_token()}")
    requests_before = len(chat.requests)

    chat.send(ATTACK)

    reply = chat.wait_for_reply()
    content = reply.locator(".content")
    expect(content).to_contain_text("<img src=x onerror=alert(1)>")  # shown as text
    expect(chat.page.locator("#messages img")).to_have_count(0)
    link = content.locator("a")
    expect(link).to_have_text("x")
    assert link.get_attribute("href") is None  # DOMPurify dropped the javascript: URL
    link.click()
    expect(chat.page.locator(".message.user")).to_have_text(ATTACK)
    assert chat.page.evaluate("window.__alerts") == 0
    assert chat.dialogs == []
    assert not [url for url in chat.requests[requests_before:] if url.endswith("/x")]


def test_markup_that_markdown_lets_through_is_neutralised(open_chat: OpenChat) -> None:
    chat = open_chat(navigate=False)
    install_xss_tripwire(chat)
    chat.open(f"#token={fresh_token()}")
    reply_text = (
        "<script>alert(1)</script>\n\n"
        "<div onclick=alert(1)>block html</div>\n\n"
        "[click](javascript:alert(1)) [data](data:text/html,<script>alert(1)</script>)\n\n"
        "![remote](https://tracker.example/pixel.png)\n\n"
        '<a href="https://example.com" onmouseover="alert(1)">hover</a>'
    )
    answer_chat(chat, thinking_then(reply_text))

    chat.send("anything")

    reply = chat.wait_for_reply()
    expect(reply.locator(".content")).to_contain_text("<script>alert(1)</script>")
    expect(reply.locator(".content")).to_contain_text("<div onclick=alert(1)>block html</div>")
    assert reply.locator("script, img, [onclick], [onmouseover], iframe").count() == 0
    hrefs = reply.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if h and re.match(r"\s*(javascript|data):", h, re.I)]
    # The image became a link to it (the CSP would refuse to load it anyway).
    expect(reply.locator("a", has_text="remote")).to_have_attribute(
        "href", "https://tracker.example/pixel.png"
    )
    reply.locator(".content").hover()
    assert chat.page.evaluate("window.__alerts") == 0


def test_markdown_and_a_highlighted_code_block_with_a_copy_button(open_chat: OpenChat) -> None:
    chat = open_chat()
    chat.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    answer_chat(chat, thinking_then(MARKDOWN))

    chat.send("show me markdown")

    reply = chat.wait_for_reply()
    content = reply.locator(".content")
    expect(content.locator("h1")).to_have_text("Title")
    expect(content.locator("strong")).to_have_text("bold")
    expect(content.locator("em")).to_have_text("italic")
    expect(content.locator("p code")).to_have_text("inline code")
    expect(content.locator("li")).to_have_text(["one", "two"])
    expect(content.locator("td")).to_have_text(["1", "2"])
    link = content.locator("a", has_text="link")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")

    code = content.locator(".code-block pre code")
    expect(code).to_have_class(re.compile(r"\bhljs\b"))
    expect(code).to_have_class(re.compile(r"\blanguage-python\b"))
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code.locator(".hljs-string")).to_have_count(1)
    expect(code.locator(".hljs-comment")).to_have_text("# a comment")
    expect(content.locator(".code-lang")).to_have_text("python")
    button = content.locator(".copy-button")
    expect(button).to_have_accessible_name("Copy python code")
    button.click()
    expect(button).to_have_text("Copied")
    copied = chat.page.evaluate("navigator.clipboard.readText()")
    assert copied == 'def greet(name: str) -> str:\n    return f"Hello, {name}!"  # a comment\n'
    expect(button).to_have_text("Copy", timeout=4000)


def test_markdown_renders_while_it_streams(open_chat: OpenChat) -> None:
    """A half-received code block is already a code block; nothing is lost when it closes."""
    chat = open_chat()
    answer_chat(chat, thinking_then("Intro.\n\n```js\nconst a = 1;\n"))  # fence never closed

    chat.send("unfinished fence")

    reply = chat.wait_for_reply()
    expect(reply.locator(".code-block pre code")).to_have_text("const a = 1;\n")
    expect(reply.locator(".code-block .hljs-keyword")).to_have_text("const")


def test_rate_limited_reply_says_when_to_try_again(open_chat: OpenChat) -> None:
    chat = open_chat(allowed_statuses=(429,))
    body = json.dumps({"detail": "Rate limit exceeded"}).encode()
    answer_chat(chat, body, status=429, **{"Retry-After": "17"})

    chat.send("too fast")

    reply = chat.wait_for_reply()
    expect(reply.locator(".error-text")).to_contain_text("Try again in 17 s (at ")
    expect(reply).to_have_class(re.compile(r"\berror\b"))
    expect(chat.page.locator("#sendButton")).to_be_enabled()


@pytest.mark.parametrize(
    ("status", "detail", "shown"),
    [
        (413, "Request body too large", "the message is too large."),
        (
            422,
            [{"msg": "String should have at most 4000 characters"}],
            "the message was not accepted: String should have at most 4000 characters.",
        ),
        (503, "Redis is unavailable", "the service is unavailable right now"),
    ],
)
def test_errors_before_the_stream_are_explained_in_the_bubble(
    open_chat: OpenChat, status: int, detail: object, shown: str
) -> None:
    chat = open_chat(allowed_statuses=(status,))
    answer_chat(chat, json.dumps({"detail": detail}).encode(), status=status)

    chat.send("will fail")

    reply = chat.wait_for_reply()
    expect(reply.locator(".error-text")).to_contain_text(shown)
    expect(reply.locator(".thinking")).to_have_count(0)


def test_an_error_event_ends_the_reply_and_keeps_what_arrived(open_chat: OpenChat) -> None:
    chat = open_chat()
    answer_chat(
        chat,
        sse_body(
            ("start", {"message": "connected"}),
            ("content", {"text": "Partial answ"}),
            ("error", {"code": "shutdown", "message": "The server is restarting."}),
        ),
    )

    chat.send("interrupted")

    reply = chat.wait_for_reply()
    expect(reply.locator(".content")).to_have_text("Partial answ")
    expect(reply.locator(".error-text")).to_contain_text("restarted during the reply")
    expect(chat.page.locator("#announcer")).to_contain_text("restarted during the reply")


def test_a_stream_that_ends_without_done_says_so(open_chat: OpenChat) -> None:
    chat = open_chat()
    answer_chat(chat, sse_body(("start", {"message": "connected"}), ("content", {"text": "Half"})))

    chat.send("cut off")

    expect(chat.wait_for_reply().locator(".error-text")).to_contain_text(
        "connection closed before the reply finished"
    )


def test_re_rendering_a_growing_reply_keeps_the_blocks_that_did_not_change(
    open_chat: OpenChat,
) -> None:
    """No flicker: a finished code block stays the same DOM node while later text streams."""
    chat = open_chat()

    result = chat.page.evaluate(
        """async () => {
          const { renderMarkdown } = await import(new URL("static/markdown.js", document.baseURI));
          const box = document.createElement("div");
          renderMarkdown(box, "```python\\nprint(1)\\n```\\n\\nFirst");
          const block = box.querySelector(".code-block");
          renderMarkdown(box, "```python\\nprint(1)\\n```\\n\\nFirst words, then more");
          return {
            same: box.querySelector(".code-block") === block,
            text: box.querySelector("p").textContent,
            blocks: box.children.length,
          };
        }"""
    )

    assert result == {"same": True, "text": "First words, then more", "blocks": 2}


def test_text_arriving_within_one_frame_is_rendered_once(open_chat: OpenChat) -> None:
    chat = open_chat()

    result = chat.page.evaluate(
        """async () => {
          const { AssistantMessage } = await import(new URL("static/bubble.js", document.baseURI));
          const list = document.createElement("div");
          document.body.append(list);
          let updates = 0;
          const bubble = new AssistantMessage(list, () => { updates += 1; });
          const content = bubble.el.querySelector(".content");
          let mutations = 0;
          new MutationObserver((records) => { mutations += records.length; })
            .observe(content, { subtree: true, childList: true, characterData: true });
          updates = 0;
          const text = "Many small pieces of text, all in the same frame.";
          for (const ch of text) bubble.appendText(ch);
          const before = content.textContent;
          await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
          list.remove();
          return { before, after: content.textContent, updates, mutations };
        }"""
    )

    assert result["before"] == ""  # nothing rendered synchronously, per character
    assert result["after"] == "Many small pieces of text, all in the same frame."
    assert result["updates"] == 1  # one render for the whole batch
    assert result["mutations"] <= 2
