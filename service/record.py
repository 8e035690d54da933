"""What one request's handling learned, for the line it ends with (observability/
middleware.py writes it when the response ends): who, what the stream did, its timing.

It rides on the ASGI scope as `state["record"]`; each part writes its own fields: the
middleware makes it, auth names the user (deps.py), the chat path the message size and
the cache (chat.py), the response its stream (response.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from .events import NAMES

if TYPE_CHECKING:
    from .tokens import Usage

CONTENT = NAMES.index("content")


@dataclass(slots=True)
class StreamStats:
    """What the access line and the metrics say about one response when it ends. Events
    are counted by name in a list (an idle stream's dict of counts cost 232 bytes)."""

    outcome: str = "done"
    events: int = 0
    bytes: int = 0
    first_content_at: float | None = None
    by_name: list[int] = field(default_factory=lambda: [0] * (len(NAMES) + 1))

    def count(self, kinds: Sequence[int]) -> None:
        """Events sent, by their names' numbers (log.KINDS); the first content's time."""
        by_name = self.by_name
        for kind in kinds:
            by_name[kind] += 1
        if self.first_content_at is None and CONTENT in kinds:
            self.first_content_at = time.perf_counter()

    @property
    def counts(self) -> dict[str, int]:
        counted = dict(zip(NAMES, self.by_name, strict=False))
        counted["error"] += self.by_name[-1]  # a name outside NAMES
        return {name: n for name, n in counted.items() if n}


@dataclass(slots=True)
class Timing:
    """Milliseconds spent before the first byte, for `Server-Timing`."""

    auth: float = 0.0
    limits: float = 0.0
    cache: float = 0.0


@dataclass(slots=True)
class RequestRecord:
    started: float
    # uvicorn's own `send`: streams write body chunks straight to it (response.py).
    raw_send: Send
    timing: Timing = field(default_factory=Timing)
    user: str | None = None
    message_chars: int | None = None
    cache: str | None = None  # HIT | MISS | BYPASS | OFF, for chat streams
    stream: StreamStats | None = None  # set by an event stream as it starts
    stream_id: str | None = None
    resumed: bool = False
    usage: Usage | None = None  # the generation's, when it had ended as the response did
    # An event stream's body, run by the outermost middleware after the app has returned.
    body: Callable[[Receive], Awaitable[None]] | None = None


def record_of(scope: Scope) -> RequestRecord:
    record: RequestRecord = scope["state"]["record"]
    return record
