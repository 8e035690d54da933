"""The token-budget gate (CHAT_TOKEN_BUDGET): a reservation of the prompt's estimate and the
most the reply may take, settled when the generation ends to what it used (budgets.py has
the policy and its ledgers, in memory or Redis). In the list only when a budget is set."""

from __future__ import annotations

import asyncio
from typing import Any

from ..budgets import Reservation, TokenBudgets
from ..errors import TooManyRequests
from ..observability import metrics
from .gate import Asking, Ending, HeaderList, Plain


class BudgetGate(Plain):
    def __init__(self, budgets: TokenBudgets) -> None:
        self.budgets = budgets

    async def take(self, asking: Asking) -> Reservation:
        return await self.budgets.reserve(asking.user, asking.prompt_tokens, asking.output_tokens)

    def refusal(self, held: Reservation, asking: Asking) -> TooManyRequests | None:
        if held.fits or asking.replayed:  # a cached reply costs no tokens: it holds none
            return None
        return self._over(held)

    async def grow(
        self, held: Reservation, asking: Asking, prompt_tokens: int
    ) -> TooManyRequests | None:
        if prompt_tokens <= 0:
            return None
        await self.budgets.top_up(held, prompt_tokens)
        return None if held.fits else self._over(held)

    def _over(self, reservation: Reservation) -> TooManyRequests:
        metrics.rate_limited.labels("tokens").inc()
        budgets = self.budgets
        left = min(budgets.limit, reservation.standing.remaining + reservation.tokens)
        return TooManyRequests(
            f"token budget reached: {left} of {budgets.limit} tokens left, "
            f"this request needs up to {reservation.tokens + reservation.wanted}",
            budgets.retry_after(reservation),
        )

    def headers(self, held: Reservation, asking: Asking) -> HeaderList:
        return self.budgets.headers(held.standing)

    def give_back(
        self, held: Reservation, asking: Asking, ending: Ending
    ) -> asyncio.Future[Any] | None:
        """Settle the reservation to what was used (nothing, for a refused request or one
        that generated nothing): whatever it holds goes back."""
        return self.budgets.settle(held, ending.usage, count=ending.counted)

    async def standing(self, asking: Asking) -> HeaderList:
        return self.budgets.headers(await self.budgets.standing(asking.user))
