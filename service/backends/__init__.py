"""Backends turn a chat request into an async iterator of events.

`open()` starts the generation and raises `BackendError` if it is refused, so the route can
still answer with a JSON error and a status; the iterator it returns yields `thinking`,
`content` and finally `done` events (see `events.Event`), and raises `BackendError` for
failures it can name once streaming, which become an `error` event. The generation adds
`start` and encodes (generation.py). Each backend plugs in behind this one Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Settings
from ..events import Event

# `done` reasons of a reply that ended by itself: the demo's `complete`, OpenAI's `stop`.
# Anything else (`length`, `content_filter`, ...) was cut short and is never cached.
NATURAL_ENDS = frozenset({"complete", "stop"})


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" | "assistant" | "system"
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The newest user message and what came before it (a conversation's turns, or an
    OpenAI client's messages), the model asked for (None: the backend's own), the most
    tokens the reply may take (None: CHAT_MAX_OUTPUT_TOKENS), and other fields for an
    OpenAI-compatible upstream, as they came (sampling and whatever else)."""

    message: str
    history: Sequence[Turn] = field(default_factory=tuple)
    model: str | None = None
    max_tokens: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


class BackendError(Exception):
    """A failure the client may be told about: a stable `code` and a safe `message`."""

    def __init__(self, code: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class Backend(Protocol):
    name: str
    model: str
    # True when `open()` waits on the network; the route then watches for the client
    # leaving meanwhile (the stream's own watcher does not exist yet).
    opens_upstream: bool

    async def open(self, request: ChatRequest) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "demo":
        from .demo import DemoBackend

        return DemoBackend(settings.demo_delay_scale)
    from .openai import OpenAIBackend

    return OpenAIBackend(settings)
