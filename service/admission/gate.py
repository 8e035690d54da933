"""What a gate is, and what it is given: the protocol every limit of admission keeps.

A gate takes its part of a request (`take`: a window's count, a slot, a reservation, a
cache ticket), judges it (`refusal`), names its headers, and hands back what it took
(`give_back`), told what the generation used. Taking may not decide: every gate takes
at once (one Redis round trip), and the verdict comes after, in the gates' order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import TooManyRequests
from ..record import Timing
from ..tokens import NOTHING, Usage

Headers = dict[str, str]
HeaderList = list[tuple[str, str]]


@dataclass(slots=True)
class Asking:
    """One request, as the gates see it."""

    user: str
    subject: str  # what makes two requests the same for the cache: the message, or more
    model: str | None = None  # the model asked for (None: the backend's)
    prompt_tokens: int = 0  # the prompt's estimate (tokens.py), for the token budget
    output_tokens: int | None = None  # the reply's own limit, when below the deployment's
    conversation_id: str | None = None  # history makes a reply particular: never cached
    no_cache: bool = False  # `Cache-Control: no-cache`
    timing: Timing = field(default_factory=Timing)
    replayed: bool = False  # the cache holds the reply: it costs no tokens
    urgent: bool = False  # refused: what it took goes back at once, not in a later batch


@dataclass(frozen=True, slots=True)
class Ending:
    """What a generation used, for the gates to settle what they took: its tokens (the
    budget's), and its reply as the cache stores it (None: not to be stored)."""

    usage: Usage = NOTHING
    blob: bytes | None = None
    counted: bool = True  # its tokens go to `chat_tokens_total`


NOTHING_USED = Ending(counted=False)


class Gate(Protocol):
    def known_refusal(self, asking: Asking) -> TooManyRequests | None:
        """A refusal this worker already knows, without a round trip (or None)."""
        ...

    async def take(self, asking: Asking) -> Any:
        """Take this gate's part; what it returns is handed to the other methods."""
        ...

    def refusal(self, held: Any, asking: Asking) -> TooManyRequests | None:
        """The 429 this gate answers with, or None to let the request pass."""
        ...

    def headers(self, held: Any, asking: Asking) -> HeaderList:
        """The response headers this gate contributes."""
        ...

    async def grow(self, held: Any, asking: Asking, prompt_tokens: int) -> TooManyRequests | None:
        """The prompt grew after admission: take for that too, or refuse."""
        ...

    def give_back(self, held: Any, asking: Asking, ending: Ending) -> asyncio.Future[Any] | None:
        """Hand back what `take` took, settled to `ending`; the future of the Redis commands
        doing it, when there are any."""
        ...

    async def standing(self, asking: Asking) -> HeaderList:
        """The headers of where the user stands, spending nothing."""
        ...


class Plain:
    """A gate's defaults: no known refusals, no headers, nothing to grow or give back."""

    def known_refusal(self, asking: Asking) -> TooManyRequests | None:
        return None

    def headers(self, held: Any, asking: Asking) -> HeaderList:
        return []

    async def grow(self, held: Any, asking: Asking, prompt_tokens: int) -> TooManyRequests | None:
        return None

    def give_back(self, held: Any, asking: Asking, ending: Ending) -> asyncio.Future[Any] | None:
        return None

    async def standing(self, asking: Asking) -> HeaderList:
        return []


def merge(lists: Sequence[HeaderList]) -> Headers:
    """Header lists into one mapping; a field named twice (the IETF `RateLimit` and
    `RateLimit-Policy` lists) gets both values, in order."""
    merged: Headers = {}
    for pairs in lists:
        for name, value in pairs:
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged
