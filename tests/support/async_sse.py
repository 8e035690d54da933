"""Many concurrent SSE clients from one asyncio loop (fault tests open 50-200 at once)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .sse import parse


@dataclass
class Events:
    """The events of one stream as (name, data) pairs, in order."""

    items: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.items]

    @property
    def text(self) -> str:
        return "".join(data["text"] for name, data in self.items if name == "content")


async def read_events(
    response: httpx.Response,
    events: Events,
    *,
    limit: int | None = None,
    on_event: Callable[[Events], None] | None = None,
) -> Events:
    """Append events to `events` as they arrive, until the stream ends or `limit` events;
    `on_event` runs after each. A caller that stops early still has what arrived before."""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            for kind, fields in parse(block + b"\n\n"):
                if kind == "event":
                    events.items.append((fields["event"], json.loads(fields["data"])))
                    if on_event is not None:
                        on_event(events)
        if limit is not None and len(events.items) >= limit:
            break
    return events
