"""The response cache in this worker: a small LRU (MEMORY_ENTRIES), each entry for
CHAT_CACHE_TTL."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from ..events import Event
from . import ResponseCache, replay_of

MEMORY_ENTRIES = 256


class MemoryCache(ResponseCache):
    def __init__(self, ttl: int) -> None:
        super().__init__(ttl)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def _find(self, key: str) -> tuple[list[Event] | None, bool]:
        return await self.get(key), True

    async def get(self, key: str) -> list[Event] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return replay_of(entry[1])

    def _store(self, key: str, blob: bytes | None, leading: bool) -> asyncio.Future[Any] | None:
        if blob is not None:
            self._entries[key] = (time.monotonic() + self.ttl, blob)
            self._entries.move_to_end(key)
            while len(self._entries) > MEMORY_ENTRIES:
                self._entries.popitem(last=False)
        return None
