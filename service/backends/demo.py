"""The demo backend: the teaching example's reply, with its pacing.

Four thinking steps each followed by 0.5 s (so the first content arrives at about 2.0 s),
then "You said: <message>." and a sentence about the demo, one character per event 0.03 s
apart. CHAT_DEMO_DELAY_SCALE multiplies every sleep; at 0 there are none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..events import Event
from . import ChatRequest

THINKING_STEPS = (
    "Understanding your question...",
    "Analysing the context...",
    "Searching for relevant knowledge...",
    "Composing the answer...",
)
THINKING_PAUSE = 0.5
CHARACTER_PAUSE = 0.03
PLAIN_CHARACTER_PAUSE = 0.02
PLAIN_TEXT = (
    "This is a complete AI chat demo!\n"
    "It supports:\n"
    "1. Server-Sent Events (SSE)\n"
    "2. Streaming output, character by character\n"
    "3. Visible thinking steps\n"
    "4. A complete chat interface\n\n"
    "Try sending it any message!\n"
)


def reply_for(message: str) -> str:
    return f"You said: {message}. This is a complete AI chat demo, with streaming output!"


class DemoBackend:
    name = "demo"
    model = "demo"
    opens_upstream = False

    def __init__(self, delay_scale: float = 1.0) -> None:
        self.delay_scale = delay_scale

    async def open(self, request: ChatRequest) -> AsyncIterator[Event]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        thinking_pause = THINKING_PAUSE * self.delay_scale
        character_pause = CHARACTER_PAUSE * self.delay_scale
        for step in THINKING_STEPS:
            yield Event("thinking", {"step": step})
            if thinking_pause:
                await asyncio.sleep(thinking_pause)
        for character in reply_for(request.message):
            yield Event("content", {"text": character})
            if character_pause:
                await asyncio.sleep(character_pause)
        yield Event("done", {"reason": "complete"})

    async def aclose(self) -> None:
        return None


async def plain_text(delay_scale: float) -> AsyncIterator[bytes]:
    """The `GET /` text for curl: one character per chunk, 0.02 s apart (scaled)."""
    pause = PLAIN_CHARACTER_PAUSE * delay_scale
    if not pause:
        yield PLAIN_TEXT.encode()
        return
    for character in PLAIN_TEXT:
        yield character.encode()
        await asyncio.sleep(pause)
