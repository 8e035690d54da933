"""The token estimate and the in-memory ledger, in process (the Redis ledger runs against a
real Redis in tests/integration/test_budgets.py)."""

from __future__ import annotations

import asyncio

from service.budgets import MemoryLedger, TokenBudgets
from service.tokens import Usage, estimate, estimate_prompt


def test_the_estimate_counts_ascii_by_threes_and_other_characters_one_each() -> None:
    assert estimate("") == 0
    assert estimate("abc") == 1
    assert estimate("abcd") == 2
    assert estimate("你好") == 2
    assert estimate("hi 你好") == 3  # "hi " is one, each CJK character one
    assert estimate_prompt(["hello"]) == 3 + 4 + 2


def test_a_reported_usage_is_taken_only_when_it_is_whole_and_sane() -> None:
    assert Usage.reported({"prompt_tokens": 9, "completion_tokens": 4}) == Usage(9, 4, "upstream")
    for bad in (None, [], {"prompt_tokens": 9}, {"prompt_tokens": -1, "completion_tokens": 4}):
        assert Usage.reported(bad) is None
    assert Usage.reported({"prompt_tokens": True, "completion_tokens": 4}) is None
    assert Usage(9, 4, "upstream").as_data()["total_tokens"] == 13


def test_reservations_fit_whole_or_not_at_all_and_settle_once() -> None:
    async def scenario() -> None:
        budgets = TokenBudgets("100/hour", 40, MemoryLedger())
        first = await budgets.reserve("ann", 10)  # 50
        second = await budgets.reserve("ann", 10)  # 100: exactly full
        third = await budgets.reserve("ann", 1)
        assert (first.fits, second.fits, third.fits) == (True, True, False)
        assert third.standing.used == 100 and third.tokens == 0
        # Open reservations would make room once settled: try again in a few seconds.
        assert budgets.retry_after(third) <= 5
        settled = budgets.settle(first, Usage(10, 5, "estimate"))
        assert settled is not None
        await settled
        assert budgets.settle(first, Usage(10, 5, "estimate")) is None  # once
        standing = await budgets.standing("ann")
        assert (standing.used, standing.reserved, standing.remaining) == (65, 50, 35)
        # A top-up that does not fit leaves what was held before.
        await budgets.top_up(second, 40)
        assert not second.fits and second.tokens == 50
        settling = budgets.settle(second, Usage(10, 40, "upstream"))
        assert settling is not None
        await settling
        assert (await budgets.standing("ann")).used == 65
        other = await budgets.standing("bob")
        assert (other.used, other.remaining) == (0, 100)

    asyncio.run(scenario())
