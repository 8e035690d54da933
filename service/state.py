"""Typed state: the worker's services (made once, in the lifespan) and the record each request
fills in as it is handled (read by the access line when it ends).

Routes reach both through `deps.py` (`AppServices`, `RecordOf`) rather than through untyped
`app.state` or `request.state` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import Scope, Send

if TYPE_CHECKING:
    from .auth import TokenVerifier
    from .backends import Backend
    from .budgets import TokenBudgets
    from .cache import ResponseCache
    from .config import Settings
    from .conversations import Conversations
    from .generation import Generations
    from .limits import RateLimits, StreamSlots
    from .observability.metrics import SharedCollection
    from .shutdown import Drain
    from .store import Store
    from .streaming import Hooks
    from .tokens import Usage


@dataclass(slots=True)
class Services:
    """Everything a worker's requests share, made in the lifespan (app.py)."""

    settings: Settings
    drain: Drain
    page: bytes
    page_headers: dict[str, str]  # its Content-Security-Policy names the OIDC issuer
    metrics: SharedCollection
    verifier: TokenVerifier
    backend: Backend
    store: Store | None
    rate_limits: RateLimits
    ip_limits: RateLimits
    resume_limits: RateLimits
    slots: StreamSlots
    budgets: TokenBudgets
    cache: ResponseCache
    conversations: Conversations
    generations: Generations
    hooks: Hooks


EVENT_NAMES = ("start", "thinking", "content", "done", "error")
EVENT_INDEX = {name: index for index, name in enumerate(EVENT_NAMES)}


@dataclass(slots=True)
class StreamStats:
    """What the access line and the metrics say about one response when it ends. Events
    are counted by name in a list (an idle stream's dict of counts cost 232 bytes)."""

    outcome: str = "done"
    events: int = 0
    bytes: int = 0
    first_content_at: float | None = None
    by_name: list[int] = field(default_factory=lambda: [0] * len(EVENT_NAMES))

    def count(self, name: str) -> None:
        self.by_name[EVENT_INDEX.get(name, EVENT_INDEX["error"])] += 1

    @property
    def counts(self) -> dict[str, int]:
        return {name: n for name, n in zip(EVENT_NAMES, self.by_name, strict=True) if n}


@dataclass(slots=True)
class Timing:
    """Milliseconds spent before the first byte, for `Server-Timing`."""

    auth: float = 0.0
    limits: float = 0.0
    cache: float = 0.0


@dataclass(slots=True)
class RequestRecord:
    """What one request's handling learned, on the ASGI scope as `state["record"]`."""

    started: float
    # uvicorn's own `send`: streams write body chunks straight to it (see sse.py).
    raw_send: Send
    timing: Timing = field(default_factory=Timing)
    user: str | None = None
    message_chars: int | None = None
    cache: str | None = None  # HIT | MISS | BYPASS | OFF, for chat streams
    stream: StreamStats | None = None  # set by an event stream as it starts
    stream_id: str | None = None
    resumed: bool = False
    usage: Usage | None = None  # the generation's, when it had ended as the response did


def record_of(scope: Scope) -> RequestRecord:
    record: RequestRecord = scope["state"]["record"]
    return record
