"""Per-user conversation history: what a conversation is, and the protocol both stores keep.

A conversation id belongs to the first user who writes to it; for anyone else it does not
exist (404 on GET, DELETE and POST alike), and their requests never touch it. Everything a
user keeps lives under that user's name, so another user's GET or DELETE cannot even find
it; only the claim on the bare id (so that a POST by someone else is a 404 too) is shared.

Each conversation has an `epoch`, made when it is created. A stream opens the conversation
(reading its history, creating it if new) and, when its reply is complete, appends its turn
*for the epoch it opened*: if the conversation was deleted meanwhile (or deleted and made
anew), the turn is dropped, so a delete sticks however long a stream on it still runs.

Bounds, per user (see the README): at most CHAT_MAX_CONVERSATIONS_PER_USER conversations
(the least recently used one goes to make room), CHAT_HISTORY_TURNS turns each, each message
at most MAX_TURN_CHARS characters, all of it forgotten CHAT_HISTORY_TTL after its last use.

Two stores keep this protocol: `MemoryConversations` (per worker) and `RedisConversations`
(shared by every worker and pod), chosen once at start-up by `make_conversations`.
History cannot fail open (answering without it would silently fork a conversation), so a
store that cannot be reached raises `HistoryUnavailable`, which the routes turn into 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..backends import Turn
from ..redis.store import Store

# A conversation id: what a client may name one. No `:` (the key scheme's separator) and
# nothing a Redis key or a hash tag would read as syntax.
ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
MAX_TURN_CHARS = 16_000
TITLE_CHARS = 80
PAGE_SIZE = 20


class NotFound(Exception):
    pass


class HistoryUnavailable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Opened:
    """A conversation as a stream finds it: the turns so far, and the epoch to append to."""

    epoch: str
    history: list[Turn]


@dataclass(frozen=True, slots=True)
class Summary:
    id: str
    title: str
    updated_at: float  # seconds since the epoch
    turns: int


@dataclass(frozen=True, slots=True)
class Page:
    conversations: list[Summary]
    next: str | None  # the cursor for the next page, if there is one


class Conversations(Protocol):
    async def open(self, user: str, conversation_id: str, message: str) -> Opened:
        """The history to send upstream, creating the conversation (titled after
        `message`) if it is new; NotFound if another user owns the id."""
        ...

    async def append(self, user: str, conversation_id: str, epoch: str, turns: list[Turn]) -> bool:
        """Keep a finished turn; False if the conversation was deleted since `open`."""
        ...

    async def history(self, user: str, conversation_id: str) -> list[Turn]:
        """The turns so far; NotFound if the user has no such conversation."""
        ...

    async def forget(self, user: str, conversation_id: str) -> None:
        """Delete it; NotFound if the user has no such conversation."""
        ...

    async def listing(self, user: str, cursor: str | None = None, limit: int = PAGE_SIZE) -> Page:
        """The user's conversations, most recently updated first."""
        ...


def clip(turns: list[Turn]) -> list[Turn]:
    return [Turn(t.role, t.content[:MAX_TURN_CHARS]) for t in turns]


def title_of(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def make_conversations(
    store: Store | None, max_turns: int, ttl: int, max_per_user: int
) -> Conversations:
    if store is None:
        from .in_memory import MemoryConversations

        return MemoryConversations(max_turns, ttl, max_per_user)
    from .in_redis import RedisConversations

    return RedisConversations(store, max_turns, ttl, max_per_user)
