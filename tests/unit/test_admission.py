"""Admission's gates, each taken and handed back, and the list of them (service/admission/),
in process with the in-memory twins (the Redis twins are proven against real servers in
tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.admission import Admission, Asking, Ending
from service.admission.budget import BudgetGate
from service.admission.rate import MemoryWindows, RateGate, RateLimits
from service.admission.slots import MemorySlots, SlotGate
from service.admission.ticket import TicketGate
from service.budgets import MemoryLedger, TokenBudgets
from service.cache.in_memory import MemoryCache
from service.errors import TooManyRequests
from service.events import Event, encode, without_id
from service.redis import keys
from service.tokens import Usage


def _rate(limit: str = "2/minute") -> RateGate:
    limits = RateLimits(limit, MemoryWindows())
    return RateGate(limits, keys.rate_window, "requests", "rate", "rate limit reached")


def _ask(user: str = "ann", message: str = "hi", **extra: Any) -> Asking:
    return Asking(user, message, **extra)


def test_the_rate_gate_counts_refuses_and_then_knows_without_asking() -> None:
    async def body() -> None:
        gate = _rate()
        taken = [await gate.take(_ask()) for _ in range(3)]
        assert [gate.refusal(t, _ask()) is None for t in taken] == [True, True, False]
        assert dict(gate.headers(taken[0], _ask()))["X-RateLimit-Remaining"] == "1"
        known = gate.known_refusal(_ask())
        assert isinstance(known, TooManyRequests) and known.detail == "rate limit reached"
        assert 1 <= int(known.headers["Retry-After"]) <= 60
        assert gate.known_refusal(_ask("bob")) is None  # per user

    asyncio.run(body())


def test_the_slot_gate_refuses_past_the_limit_and_gives_slots_back() -> None:
    async def body() -> None:
        gate = SlotGate(MemorySlots(1))
        first = await gate.take(_ask())
        second = await gate.take(_ask())
        assert gate.refusal(first, _ask()) is None
        refusal = gate.refusal(second, _ask())
        assert refusal is not None and refusal.detail == "too many open streams"
        gate.give_back(first, _ask(), Ending())
        assert gate.refusal(await gate.take(_ask()), _ask()) is None

    asyncio.run(body())


def test_the_budget_gate_reserves_refuses_and_settles_to_what_was_used() -> None:
    async def body() -> None:
        budgets = TokenBudgets("100/hour", 40, MemoryLedger())
        gate = BudgetGate(budgets)
        held = await gate.take(_ask(prompt_tokens=10))  # 10 + 40 reserved
        assert gate.refusal(held, _ask()) is None
        again = await gate.take(_ask(prompt_tokens=10))  # 100 of 100
        over = await gate.take(_ask(prompt_tokens=10))
        refusal = gate.refusal(over, _ask())
        assert refusal is not None and refusal.detail.startswith("token budget reached")
        assert gate.refusal(over, _ask(replayed=True)) is None  # a replay costs nothing
        gate.give_back(held, _ask(), Ending(Usage(10, 5, "estimate")))
        gate.give_back(again, _ask(), Ending())
        await asyncio.sleep(0)
        standing = await budgets.standing("ann")
        assert standing.used == 15
        pairs = dict(gate.headers(held, _ask()))
        assert pairs["RateLimit-Policy"].startswith('"tokens";q=100')

    asyncio.run(body())


def test_the_ticket_gate_leads_a_miss_replays_a_hit_and_stays_off_for_a_conversation() -> None:
    async def body() -> None:
        cache = MemoryCache(60)
        gate = TicketGate(cache, "demo", "demo", per_user=True)
        miss = await gate.take(_ask())
        assert (miss.mode, miss.leading) == ("MISS", True)
        reply = [Event("content", {"text": "x"}), Event("done", {"reason": "complete"})]
        blob = b"".join(without_id(encode(e, b"s:%d" % n)) for n, e in enumerate(reply, 2))
        gate.give_back(miss, _ask(), Ending(blob=blob))
        asking = _ask()
        hit = await gate.take(asking)
        assert hit.mode == "HIT" and hit.events == reply and asking.replayed
        assert gate.headers(hit, asking) == [("X-Cache", "HIT")]
        assert (await gate.take(_ask("bob"))).mode == "MISS"  # another user's reply
        off = await gate.take(_ask(conversation_id="c1"))
        assert (off.mode, off.key) == ("OFF", None)
        bypass = await gate.take(_ask(no_cache=True))
        assert bypass.mode == "BYPASS" and bypass.events is None

    asyncio.run(body())


def test_a_refusal_hands_back_everything_taken_and_says_the_first_gates_reason() -> None:
    async def body() -> None:
        slots = MemorySlots(1)
        admission = Admission([_rate("1/minute"), SlotGate(slots)])
        admitted = await admission.admit(_ask())
        with pytest.raises(TooManyRequests) as refused:
            await admission.admit(_ask())
        assert refused.value.detail == "rate limit reached"  # not the slot's, though full
        assert "X-RateLimit-Limit" in refused.value.headers
        admitted.release()
        assert await slots.acquire("ann") is not None  # nothing leaked

    asyncio.run(body())


def test_release_goes_in_reverse_order_once() -> None:
    order: list[str] = []

    class Recorded(SlotGate):
        def __init__(self, name: str) -> None:
            super().__init__(MemorySlots(5))
            self.name = name

        def give_back(self, held: Any, asking: Asking, ending: Ending) -> Any:
            order.append(self.name)
            return super().give_back(held, asking, ending)

    async def body() -> None:
        admission = Admission([Recorded("first"), Recorded("second"), Recorded("third")])
        admitted = await admission.admit(_ask())
        admitted.release()
        admitted.release()

    asyncio.run(body())
    assert order == ["third", "second", "first"]
