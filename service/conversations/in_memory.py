"""Conversations in this worker's memory: enough for one worker and for trials (the service
says so at start-up). Besides the per-user bounds, the worker keeps MEMORY_CONVERSATIONS in
all, forgetting the least recently used first."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..backends import Turn
from . import PAGE_SIZE, NotFound, Opened, Page, Summary, clip, title_of

MEMORY_CONVERSATIONS = 10_000


@dataclass
class _Conversation:
    epoch: str
    title: str
    updated_at: float
    expires: float
    turns: list[Turn] = field(default_factory=list)


class MemoryConversations:
    def __init__(self, max_turns: int, ttl: int, max_per_user: int) -> None:
        self.max_messages = max_turns * 2  # a turn is a user message and its reply
        self.ttl = ttl
        self.max_per_user = max_per_user
        # (user, id) -> conversation, least recently used first.
        self._all: OrderedDict[tuple[str, str], _Conversation] = OrderedDict()
        self._owners: dict[str, str] = {}  # id -> the user who claimed it

    async def open(self, user: str, conversation_id: str, message: str) -> Opened:
        owner = self._owners.get(conversation_id)
        if owner is not None and owner != user and self._live(owner, conversation_id):
            raise NotFound
        now = time.time()
        conversation = self._live(user, conversation_id)
        if conversation is None:
            conversation = _Conversation(secrets.token_hex(8), title_of(message), now, 0.0)
            self._owners[conversation_id] = user
        conversation.updated_at = now
        conversation.expires = time.monotonic() + self.ttl
        self._all[(user, conversation_id)] = conversation
        self._all.move_to_end((user, conversation_id))
        self._bound(user)
        return Opened(conversation.epoch, list(conversation.turns))

    async def append(self, user: str, conversation_id: str, epoch: str, turns: list[Turn]) -> bool:
        conversation = self._live(user, conversation_id)
        if conversation is None or conversation.epoch != epoch:
            return False  # deleted (or deleted and made anew) since the stream opened it
        if self.max_messages:  # CHAT_HISTORY_TURNS=0 keeps none (`[-0:]` would keep all)
            conversation.turns = (conversation.turns + clip(turns))[-self.max_messages :]
        conversation.updated_at = time.time()
        conversation.expires = time.monotonic() + self.ttl
        self._all.move_to_end((user, conversation_id))
        return True

    async def history(self, user: str, conversation_id: str) -> list[Turn]:
        conversation = self._live(user, conversation_id)
        if conversation is None:
            raise NotFound
        return list(conversation.turns)

    async def forget(self, user: str, conversation_id: str) -> None:
        if self._live(user, conversation_id) is None:
            raise NotFound
        self._drop(user, conversation_id)

    async def listing(self, user: str, cursor: str | None = None, limit: int = PAGE_SIZE) -> Page:
        mine = [
            Summary(cid, c.title, c.updated_at, len(c.turns) // 2)
            for (owner, cid), c in self._all.items()
            if owner == user and c.expires >= time.monotonic()
        ]
        mine.sort(key=lambda s: (s.updated_at, s.id), reverse=True)
        start = int(cursor) if cursor and cursor.isdigit() else 0
        page = mine[start : start + limit]
        more = start + limit < len(mine)
        return Page(page, str(start + limit) if more else None)

    def _live(self, user: str, conversation_id: str) -> _Conversation | None:
        conversation = self._all.get((user, conversation_id))
        if conversation is not None and conversation.expires < time.monotonic():
            self._drop(user, conversation_id)
            return None
        return conversation

    def _drop(self, user: str, conversation_id: str) -> None:
        self._all.pop((user, conversation_id), None)
        if self._owners.get(conversation_id) == user:
            del self._owners[conversation_id]

    def _bound(self, user: str) -> None:
        mine = [key for key in self._all if key[0] == user]
        for key in mine[: max(0, len(mine) - self.max_per_user)]:
            self._drop(*key)
        while len(self._all) > MEMORY_CONVERSATIONS:
            self._drop(*next(iter(self._all)))
