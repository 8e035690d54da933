"""Admission: whether a request may stream, as a list of gates, and what letting it in took.

Each gate is one limit (gate.py holds the protocol): the user's rate (rate.py), an
open-stream slot (slots.py), a reservation against the token budget (budget.py, when
there is one), the response cache's ticket (ticket.py). For each request:

    known refusals:  any gate that already knows the answer refuses without a round trip
    take:            every gate takes at once; with Redis, all their commands go in one
                     batch (redis/pipeline.py): one round trip admits a request
    verdict:         in the gates' order, the first refusal wins; everything taken is handed
                     back (in reverse order) before the client hears it, 429 with the
                     refusing gate's Retry-After and every gate's headers
    release:         once, when the generation ends (or nothing was generated), in reverse
                     order, each gate given what the generation used (`Ending`)

Adding a limit is one new gate module and its settings, and one line in app.py's list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .gate import NOTHING_USED, Asking, Ending, Gate, merge

__all__ = ["NOTHING_USED", "Admission", "Admitted", "Asking", "Ending", "Gate"]


@dataclass(slots=True)
class Admitted:
    """What one admitted request holds, gate by gate, until `release`."""

    gates: Sequence[Gate]
    held: list[Any]
    asking: Asking
    released: bool = field(default=False)

    def holding(self, gate: Gate) -> Any:
        """What `gate` took for this request."""
        return self.held[self.gates.index(gate)]

    def headers(self) -> dict[str, str]:
        """Every gate's headers, in the gates' order (gate.merge)."""
        pairs = zip(self.gates, self.held, strict=True)
        return merge([gate.headers(held, self.asking) for gate, held in pairs])

    async def grow(self, prompt_tokens: int) -> None:
        """The prompt grew (a conversation's history, read after admission): each gate that
        counts it takes its share too, or refuses (429), what it held before staying held
        until `release`."""
        for gate, held in zip(self.gates, self.held, strict=True):
            refusal = await gate.grow(held, self.asking, prompt_tokens)
            if refusal is not None:
                raise refusal.with_headers(self.headers())

    def release(self, ending: Ending = NOTHING_USED) -> list[asyncio.Future[Any]]:
        """Hand everything back, in reverse order, once; returns what is still on its way."""
        if self.released:
            return []
        self.released = True
        pending = []
        for gate, held in reversed(list(zip(self.gates, self.held, strict=True))):
            future = gate.give_back(held, self.asking, ending)
            if future is not None:
                pending.append(future)
        return pending


class Admission:
    def __init__(self, gates: Sequence[Gate], give_up: float = 5.0) -> None:
        self.gates = list(gates)
        self.give_up = give_up  # how long a refusal waits for what it hands back

    async def admit(self, asking: Asking) -> Admitted:
        """Every gate's part, or TooManyRequests (429) with nothing left held."""
        for gate in self.gates:
            refusal = gate.known_refusal(asking)
            if refusal is not None:
                raise refusal
        started = time.perf_counter()
        held = list(await asyncio.gather(*(gate.take(asking) for gate in self.gates)))
        asking.timing.limits = asking.timing.cache = (time.perf_counter() - started) * 1000
        admitted = Admitted(self.gates, held, asking)
        for gate, taken in zip(self.gates, held, strict=True):
            refusal = gate.refusal(taken, asking)
            if refusal is not None:
                await self.refuse(admitted)
                raise refusal.with_headers(admitted.headers())
        return admitted

    async def refuse(self, admitted: Admitted) -> None:
        """Hand back what a refused request took, urgently: all of it is gone by the time
        the client hears it is refused (within `give_up`, with Redis)."""
        admitted.asking.urgent = True
        pending = admitted.release()
        if pending:
            await asyncio.wait(pending, timeout=self.give_up)

    async def standing(self, asking: Asking) -> dict[str, str]:
        """The headers of where `asking`'s user stands, spending nothing (a resumed
        stream's)."""
        return merge(await asyncio.gather(*(gate.standing(asking) for gate in self.gates)))
