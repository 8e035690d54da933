"""The chat page as the browser tests see it: a recorded tab, and small helpers."""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Locator, Page, expect

from tests.support import metrics as support_metrics
from tests.support.service import Service
from tests.support.tokens import make_token

CHROMIUM = Path(os.environ.get("CHAT_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 360, "height": 740}
FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class ChatPage:
    """One browser tab on the chat page, with everything it did recorded."""

    page: Page
    base_url: str
    allowed_statuses: set[int]
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def watch(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("request", self._on_request)
        # A dialog would mean injected script ran; dismiss it so the page does not hang.
        self.page.on("dialog", self._on_dialog)

    def _ours(self) -> bool:
        """Whether the tab shows the chat page now (not, say, an OpenID provider's sign-in
        page, whose own requests and messages are not the page's)."""
        return self.page.url.startswith(self.base_url) or self.page.url == "about:blank"

    def _on_request(self, request: Any) -> None:
        if self._ours():
            self.requests.append(request.url)

    def _on_console(self, message: Any) -> None:
        if message.type != "error" or not self._ours():
            return
        failed = FAILED_LOAD.search(message.text)
        if failed and int(failed.group(1)) in self.allowed_statuses:
            return
        self.console_errors.append(message.text)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    # Actions -----------------------------------------------------------------------------

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base_url}/{fragment}")
        expect(self.page.locator("#sendButton")).to_be_visible()

    def send(self, text: str) -> None:
        self.page.locator("#messageInput").fill(text)
        self.page.locator("#messageInput").press("Enter")

    @property
    def reply(self) -> Locator:
        """The newest assistant bubble."""
        return self.page.locator(".message.assistant").last

    def wait_for_reply(self, timeout: float = 20_000) -> Locator:
        expect(self.reply).to_have_attribute("aria-busy", "false", timeout=timeout)
        return self.reply

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    # Checks ------------------------------------------------------------------------------

    def off_host_requests(self) -> list[str]:
        return [url for url in self.requests if urlsplit(url).hostname != "127.0.0.1"]

    def assert_clean(self) -> None:
        assert self.page_errors == [], "the page threw"
        assert self.console_errors == [], f"the page logged errors: {self.console_errors}"
        assert self.dialogs == [], "a dialog opened: injected script ran"
        assert self.off_host_requests() == [], "a request left 127.0.0.1"


def fresh_token() -> str:
    """A valid token for a user of its own, so tests never share per-user limits."""
    return make_token(sub=f"e2e-{uuid.uuid4().hex[:12]}")


def metric(service: Service, name: str) -> float:
    """The value of an unlabelled metric from /metrics (summed over workers by the service)."""
    return support_metrics.metric(service.url, name)


def sse_body(*events: tuple[str, Any], newline: str = "\n") -> bytes:
    """An event-stream body, for page.route() to answer /chat with."""
    parts = []
    for number, (name, data) in enumerate(events, start=1):
        payload = json.dumps(data, ensure_ascii=False)
        parts.append(
            f"id: {number}{newline}event: {name}{newline}data: {payload}{newline}{newline}"
        )
    return "".join(parts).encode()


def thinking_then(text: str, steps: tuple[str, ...] = ("Reading...",)) -> bytes:
    """A complete reply: start, the thinking steps, `text` in small chunks, done."""
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    return sse_body(
        ("start", {"message": "connected"}),
        *(("thinking", {"step": step}) for step in steps),
        *(("content", {"text": chunk}) for chunk in chunks),
        ("done", {"reason": "complete"}),
    )
