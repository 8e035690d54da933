"""The demo backend's words, written out here rather than imported from the code under
test: a changed reply must turn the tests red, not change what they expect."""

from __future__ import annotations

THINKING = [
    "Understanding your question...",
    "Analysing the context...",
    "Searching for relevant knowledge...",
    "Composing the answer...",
]


def demo_reply(message: str) -> str:
    return f"You said: {message}. This is a complete AI chat demo, with streaming output!"
