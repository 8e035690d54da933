"""Token budgets: reserve before a stream, settle after it, one count across workers and pods.

With CHAT_TOKEN_BUDGET (`N/second|minute|hour|day`) each user may use N tokens, prompt and
completion together, per fixed window; the window starts with the user's first reservation
and is reckoned on Redis's clock (`TIME`), as the stream leases are.

    admission: reserve(prompt estimate + CHAT_MAX_OUTPUT_TOKENS) -> fits, or 429
    conversation history read: reserve its estimate on top (same reservation) -> or 429
    generation's end, whatever the outcome: settle(reservation, usage) -> the count is
        corrected to what was really used (the upstream's `usage`, or an estimate)

A reservation that does not fit is refused whole, so concurrent streams can never spend
more than the budget: each holds its worst case until it settles, and the worst case
differs from the truth only by the prompt estimate's error (the output limit is sent
upstream). The count is one hash per user and window: `used` (settled use plus open
reservations) and one field per open reservation, which is how a settlement is applied
once however often it is retried, and why a worker killed mid-stream leaves nothing
that outlives the window: the hash expires with it.

A settlement that cannot reach Redis is retried until it lands or its window has ended
(the hash and the reservation in it are gone by then). Reserving fails open like every
other limit: Redis unreachable, the request goes ahead uncounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from limits import parse

from .observability import metrics
from .observability.logging import get_logger
from .redis import keys
from .redis.store import Script, Store
from .tokens import Usage

log = get_logger("service.budgets")

# KEYS[1] = the user's budget hash; ARGV = limit, window ms, tokens, reservation id, tokens
# the reservation already holds (a top-up; 0 for a new one). Returns {fits (1/0), used,
# reset ms, held by open reservations}.
RESERVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local amount, field = tonumber(ARGV[3]), 'r:' .. ARGV[4]
local start = tonumber(redis.call('HGET', KEYS[1], 'start'))
if not start or start + window <= now then
  redis.call('DEL', KEYS[1])
  start = now
  redis.call('HSET', KEYS[1], 'start', start, 'used', 0, 'held', 0)
  redis.call('PEXPIRE', KEYS[1], window)
end
if not redis.call('HGET', KEYS[1], field) then
  -- a top-up whose reservation was in a window that has ended: it moves here whole
  amount = amount + tonumber(ARGV[5])
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used'))
local held = tonumber(redis.call('HGET', KEYS[1], 'held'))
local reset = start + window - now
if used + amount > limit then
  return {0, used, reset, held}
end
redis.call('HINCRBY', KEYS[1], field, amount)
redis.call('HINCRBY', KEYS[1], 'held', amount)
return {1, redis.call('HINCRBY', KEYS[1], 'used', amount), reset, held + amount}
""")
# KEYS[1] = the user's budget hash; ARGV = reservation id, tokens really used. Applies once:
# the reservation's field is gone after. Returns 1, or 0 when there was nothing to settle.
SETTLE = Script("""
local field = 'r:' .. ARGV[1]
local reserved = tonumber(redis.call('HGET', KEYS[1], field))
if not reserved then
  return 0
end
redis.call('HDEL', KEYS[1], field)
redis.call('HINCRBY', KEYS[1], 'held', -reserved)
local used = redis.call('HINCRBY', KEYS[1], 'used', tonumber(ARGV[2]) - reserved)
if used < 0 then
  redis.call('HSET', KEYS[1], 'used', 0)
end
return 1
""")
# KEYS[1] = the user's budget hash; ARGV = window ms. Returns {used, reset ms, held}.
PEEK = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'start', 'used', 'held')
local start = tonumber(v[1])
if not start or start + tonumber(ARGV[1]) <= now then
  return {0, tonumber(ARGV[1]), 0}
end
return {tonumber(v[2]), start + tonumber(ARGV[1]) - now, tonumber(v[3])}
""")

# How soon a refused request may try again when open reservations, once settled, would
# let it in: about when a stream ends, there is no better moment to name.
SETTLING_RETRY_AFTER = 5
SETTLE_PAUSES = (0.25, 0.5, 1.0, 2.0, 5.0)
LAST_SETTLE_SECONDS = 2.0  # at shutdown


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a user stands: the window's count (open reservations included), how much of
    it open reservations hold, and when the window ends."""

    limit: int
    used: int
    reserved: int
    reset_seconds: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(slots=True)
class Reservation:
    user: str
    id: str
    tokens: int  # held now
    fits: bool  # whether the last request for more fitted
    standing: Standing
    wanted: int = 0  # what the last request for more asked for
    ends_at: float = 0.0  # when its window ends (this worker's clock), to stop retrying
    settled: bool = field(default=False)


class Ledger(Protocol):
    """Where budgets are counted. `reserve` returns (fits, used, reset ms, held)."""

    async def reserve(
        self, user: str, limit: int, window_ms: int, tokens: int, rid: str, held: int
    ) -> tuple[int, int, int, int] | None: ...

    async def settle(self, user: str, rid: str, used: int) -> bool | None: ...

    async def peek(self, user: str, window_ms: int) -> tuple[int, int, int] | None: ...


class MemoryLedger:
    """The same count in this worker (no Redis: one worker by default keeps it exact)."""

    PRUNE_EVERY = 10_000

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def _current(self, user: str, window_ms: int) -> _Window:
        now = time.monotonic() * 1000
        window = self._windows.get(user)
        if window is None or window.start + window_ms <= now:
            if len(self._windows) >= self.PRUNE_EVERY:
                self._prune(now, window_ms)
            window = self._windows[user] = _Window(now)
        return window

    def _prune(self, now: float, window_ms: int) -> None:
        for user, window in list(self._windows.items()):
            if window.start + window_ms <= now:
                del self._windows[user]

    async def reserve(
        self, user: str, limit: int, window_ms: int, tokens: int, rid: str, held: int
    ) -> tuple[int, int, int, int] | None:
        window = self._current(user, window_ms)
        if rid not in window.open:
            tokens += held
        reset = math.ceil(window.start + window_ms - time.monotonic() * 1000)
        if window.used + tokens > limit:
            return 0, window.used, reset, sum(window.open.values())
        window.open[rid] = window.open.get(rid, 0) + tokens
        window.used += tokens
        return 1, window.used, reset, sum(window.open.values())

    async def settle(self, user: str, rid: str, used: int) -> bool | None:
        window = self._windows.get(user)
        reserved = window.open.pop(rid, None) if window is not None else None
        if window is None or reserved is None:
            return False
        window.used = max(0, window.used - reserved + used)
        return True

    async def peek(self, user: str, window_ms: int) -> tuple[int, int, int] | None:
        window = self._windows.get(user)
        now = time.monotonic() * 1000
        if window is None or window.start + window_ms <= now:
            return 0, window_ms, 0
        return window.used, math.ceil(window.start + window_ms - now), sum(window.open.values())


@dataclass(slots=True)
class _Window:
    start: float
    used: int = 0
    open: dict[str, int] = field(default_factory=dict)  # reservation id -> tokens


class RedisLedger:
    """One hash per user (`chat:u:{...}:tokens`, in the user's hash slot), scripts that
    read Redis's clock; None when Redis is unreachable."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def _key(user: str) -> str:
        return keys.token_budget(user)

    async def reserve(
        self, user: str, limit: int, window_ms: int, tokens: int, rid: str, held: int
    ) -> tuple[int, int, int, int] | None:
        args = (limit, window_ms, tokens, rid, held)
        reply = await self.store.run_script("budget", RESERVE, [self._key(user)], args, None)
        if reply is None:
            return None
        fits, used, reset_ms, held = (int(value) for value in reply)
        return fits, used, reset_ms, held

    async def settle(self, user: str, rid: str, used: int) -> bool | None:
        reply = await self.store.run_script("budget", SETTLE, [self._key(user)], (rid, used), None)
        return None if reply is None else bool(reply)

    async def peek(self, user: str, window_ms: int) -> tuple[int, int, int] | None:
        reply = await self.store.run_script("budget", PEEK, [self._key(user)], (window_ms,), None)
        return None if reply is None else (int(reply[0]), int(reply[1]), int(reply[2]))


class TokenBudgets:
    """The budget policy over a ledger; `enabled` is False without CHAT_TOKEN_BUDGET."""

    def __init__(self, budget: str | None, max_output_tokens: int, ledger: Ledger) -> None:
        self.enabled = budget is not None
        item = parse(budget) if budget else None
        self.limit = item.amount if item else 0
        self.window_seconds = item.get_expiry() if item else 0
        self.window_ms = self.window_seconds * 1000
        self.max_output_tokens = max_output_tokens
        self.ledger = ledger
        self._settling: set[asyncio.Task[None]] = set()

    def _standing(self, used: int, reset_ms: int, held: int) -> Standing:
        return Standing(self.limit, used, held, max(0, math.ceil(reset_ms / 1000)))

    async def reserve(
        self, user: str, prompt_tokens: int, output_tokens: int | None = None
    ) -> Reservation:
        """Reserve the prompt's estimate and the most the reply may take (the request's own
        limit when it is lower). `fits` False: refused, nothing held. Redis unreachable:
        fits, uncounted (fail open)."""
        output = min(output_tokens or self.max_output_tokens, self.max_output_tokens)
        tokens = prompt_tokens + output
        reservation = Reservation(user, secrets.token_hex(8), 0, True, self._open_standing())
        return await self.top_up(reservation, tokens)

    async def top_up(self, reservation: Reservation, tokens: int) -> Reservation:
        """Reserve `tokens` more on the same reservation (a conversation's history, read
        after admission); refused: `fits` False, and what it held before stays held."""
        reservation.wanted = tokens
        reply = await self.ledger.reserve(
            reservation.user, self.limit, self.window_ms, tokens, reservation.id, reservation.tokens
        )
        if reply is None:  # Redis unreachable: fail open, and nothing to settle
            reservation.fits = True
            return reservation
        fits, used, reset_ms, held = reply
        reservation.standing = self._standing(used, reset_ms, held)
        reservation.fits = bool(fits)
        if fits:
            reservation.tokens += tokens
            reservation.ends_at = time.monotonic() + reset_ms / 1000
        return reservation

    def retry_after(self, reservation: Reservation) -> int:
        """When a refused request may fit: when open reservations settle, if settling them
        could make room; otherwise when the window ends."""
        standing, needed = reservation.standing, reservation.tokens + reservation.wanted
        if standing.used - standing.reserved + needed <= self.limit:
            return min(SETTLING_RETRY_AFTER, max(1, standing.reset_seconds))
        return max(1, standing.reset_seconds)

    def headers(self, standing: Standing) -> list[tuple[str, str]]:
        """The `"tokens"` policy, for the IETF fields beside the `"requests"` one."""
        window, remaining, reset = self.window_seconds, standing.remaining, standing.reset_seconds
        return [
            ("RateLimit-Policy", f'"tokens";q={self.limit};w={window}'),
            ("RateLimit", f'"tokens";r={remaining};t={reset}'),
        ]

    def settle(
        self, reservation: Reservation | None, usage: Usage, count: bool = True
    ) -> asyncio.Future[None] | None:
        """Count what a generation used (`chat_tokens_total`) and correct its reservation
        to it, retried in the background until it lands or the window it was reserved in
        has ended. Returns the settling, for a caller that must wait for it."""
        if count:
            metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
            metrics.tokens.labels("completion").inc(usage.completion_tokens)
        if reservation is None or reservation.settled or not reservation.tokens:
            return None
        reservation.settled = True
        task = asyncio.ensure_future(self._settle(reservation, usage.total_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    async def _settle(self, reservation: Reservation, used: int) -> None:
        for attempt in itertools.count():
            if await self.ledger.settle(reservation.user, reservation.id, used) is not None:
                return
            if time.monotonic() >= reservation.ends_at:
                return  # its window has ended, and the reservation with it
            pause = SETTLE_PAUSES[min(attempt, len(SETTLE_PAUSES) - 1)]
            await asyncio.sleep(min(pause, max(0.0, reservation.ends_at - time.monotonic())))

    async def standing(self, user: str) -> Standing:
        reply = await self.ledger.peek(user, self.window_ms)
        if reply is None:
            return self._open_standing()
        used, reset_ms, held = reply
        return self._standing(used, reset_ms, held)

    def _open_standing(self) -> Standing:
        return Standing(self.limit, 0, 0, self.window_seconds)

    async def aclose(self) -> None:
        """Give settlements still retrying a last moment to land."""
        if self._settling:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._settling, timeout=LAST_SETTLE_SECONDS)
            for task in self._settling:
                task.cancel()


def make_budgets(budget: str | None, max_output_tokens: int, store: Store | None) -> TokenBudgets:
    ledger: Ledger = RedisLedger(store) if store is not None else MemoryLedger()
    return TokenBudgets(budget, max_output_tokens, ledger)
