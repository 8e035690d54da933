"""Whether a worker takes traffic (`/readyz`): not while it drains, nor while a dependency
it cannot do without is down (Redis, when configured; nothing otherwise)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Dependency(Protocol):
    """Something the service cannot serve fully without (`/readyz` names it when down)."""

    name: str

    async def ping(self) -> bool: ...


class Draining(Protocol):
    draining: bool


class Readiness:
    """Ready unless draining or a dependency is down (none without Redis)."""

    def __init__(self, drain: Draining, dependencies: Sequence[Dependency]) -> None:
        self.drain = drain
        self.dependencies = dependencies

    async def not_ready(self) -> str | None:
        """What keeps the worker from taking traffic, or None."""
        if self.drain.draining:
            return "shutting down"
        for dependency in self.dependencies:
            if not await dependency.ping():
                return f"{dependency.name} unavailable"
        return None
