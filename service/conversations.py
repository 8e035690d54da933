"""Per-user conversation history: the last CHAT_HISTORY_TURNS turns, kept CHAT_HISTORY_TTL.

A conversation id belongs to the first user who writes to it; for anyone else it does not
exist (404 on GET, DELETE and POST alike), and their requests never touch it. In Redis the
owner and the turns are two keys whose TTL each write renews; without Redis, a per-worker
dict (enough for one worker and for trials, and said so at start-up).

Unlike limits, history cannot fail open: answering without it would silently fork the
conversation, so a Redis failure here is a 503.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .backends import Turn
from .observability.logging import get_logger
from .store import Store

log = get_logger("service.conversations")

MAX_TURN_CHARS = 32_000
MEMORY_CONVERSATIONS = 10_000


class NotFound(Exception):
    pass


class HistoryUnavailable(Exception):
    pass


@dataclass
class _Memory:
    owner: str
    turns: list[Turn] = field(default_factory=list)
    expires: float = 0.0


class Conversations:
    def __init__(self, store: Store | None, max_turns: int, ttl: int) -> None:
        self.store = store
        self.max_messages = max_turns * 2  # a turn is a user message and its reply
        self.ttl = ttl
        self._memory: OrderedDict[str, _Memory] = OrderedDict()

    async def history(self, user: str, conversation_id: str) -> list[Turn]:
        """Turns so far; [] for a new id; NotFound if another user owns it."""
        if self.store is None:
            entry = self._live(conversation_id)
            if entry is None:
                return []
            if entry.owner != user:
                raise NotFound
            return list(entry.turns)
        redis = self.store.redis
        key = _key(conversation_id)

        async def read() -> tuple[bytes | None, list[bytes]]:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.get(f"{key}:owner")
                pipe.lrange(f"{key}:turns", 0, -1)
                owner, raw = await pipe.execute()
            return owner, raw

        result = await self.store.call("history", read, None)
        if result is None:
            raise HistoryUnavailable
        owner, raw = result
        if owner is None:
            return []
        if owner.decode() != user:
            raise NotFound
        return [Turn(**json.loads(item)) for item in raw]

    async def append(self, user: str, conversation_id: str, turns: list[Turn]) -> None:
        if self.max_messages == 0:  # CHAT_HISTORY_TURNS=0: keep none (`[-0:]` keeps all)
            return
        turns = [Turn(t.role, t.content[:MAX_TURN_CHARS]) for t in turns]
        if self.store is None:
            entry = self._live(conversation_id) or _Memory(owner=user)
            if entry.owner != user:
                return
            entry.turns = (entry.turns + turns)[-self.max_messages :]
            entry.expires = time.monotonic() + self.ttl
            self._memory[conversation_id] = entry
            self._memory.move_to_end(conversation_id)
            while len(self._memory) > MEMORY_CONVERSATIONS:
                self._memory.popitem(last=False)
            return
        redis = self.store.redis
        key = _key(conversation_id)
        items = [json.dumps({"role": t.role, "content": t.content}) for t in turns]

        async def write() -> bool:
            # SET NX claims a new id; an id someone else owns is left alone.
            claimed = await redis.set(f"{key}:owner", user, nx=True, ex=self.ttl)
            if not claimed:
                owner: Any = await redis.get(f"{key}:owner")
                if owner is None or owner.decode() != user:
                    return False
            async with redis.pipeline(transaction=True) as pipe:
                pipe.rpush(f"{key}:turns", *items)
                pipe.ltrim(f"{key}:turns", -self.max_messages, -1)
                pipe.expire(f"{key}:turns", self.ttl)
                pipe.expire(f"{key}:owner", self.ttl)
                await pipe.execute()
            return True

        if not await self.store.call("history", write, False):
            # Counted and logged by the store when Redis failed; an id owned by someone else
            # cannot get here (`history` refused it first), so this is the store's failure.
            log.warning("conversation turn not stored", conversation_id=conversation_id)

    async def forget(self, user: str, conversation_id: str) -> None:
        await self.history(user, conversation_id)  # raises NotFound for another's id
        if self.store is None:
            if self._memory.pop(conversation_id, None) is None:
                raise NotFound
            return
        redis = self.store.redis
        key = _key(conversation_id)
        deleted = await self.store.call(
            "history", lambda: redis.delete(f"{key}:owner", f"{key}:turns"), None
        )
        if deleted is None:
            raise HistoryUnavailable
        if deleted == 0:
            raise NotFound

    def _live(self, conversation_id: str) -> _Memory | None:
        entry = self._memory.get(conversation_id)
        if entry is not None and entry.expires < time.monotonic():
            del self._memory[conversation_id]
            return None
        return entry


def _key(conversation_id: str) -> str:
    return f"chat:conv:{conversation_id}"
