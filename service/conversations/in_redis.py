"""Conversations in Redis, shared by every worker and pod.

A user's keys share one Cluster hash slot (the `{...}` tag is a hash of the user), so each
step below is one script on one node:

    chat:u:{U}:convs            sorted set: conversation id -> last use (ms, Redis's clock)
    chat:u:{U}:conv:<id>        hash: epoch, title, updated
    chat:u:{U}:conv:<id>:turns  list of JSON messages, the last CHAT_HISTORY_TURNS turns
    chat:conv-owner:<id>        the user who claimed the bare id (its own slot)

(named in redis/keys.py; the scripts that evict build `<prefix>:conv:<id>` themselves).

Every write renews CHAT_HISTORY_TTL on what it touches; a conversation left alone expires,
and the listing drops index entries whose conversation has expired.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from ..backends import Turn
from ..observability.logging import get_logger
from ..redis import keys
from ..redis.store import Script, Store
from . import PAGE_SIZE, HistoryUnavailable, NotFound, Opened, Page, Summary, clip, title_of

log = get_logger("service.conversations")

# KEYS = owner key; ARGV = user, ttl ms. Claims a free id, or renews the user's own claim.
CLAIM = Script("""
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")
# KEYS = owner key; ARGV = user. Releases the claim only for its owner.
UNCLAIM = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS = index, conversation, turns; ARGV = id, new epoch, title, max per user, ttl ms,
# key prefix. Returns {epoch, turns, evicted ids}.
OPEN = Script(
    _NOW
    + """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local evicted = {}
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'title', ARGV[3], 'updated', now)
else
  redis.call('HSET', KEYS[2], 'updated', now)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    local key = ARGV[6] .. ':conv:' .. old
    redis.call('DEL', key, key .. ':turns')
    redis.call('ZREM', KEYS[1], old)
    table.insert(evicted, old)
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return {epoch, redis.call('LRANGE', KEYS[3], 0, -1), evicted}
"""
)
# KEYS = index, conversation, turns; ARGV = id, epoch, messages kept, ttl ms, messages...
# Appends only to the epoch the stream opened: a deleted conversation stays deleted.
APPEND = Script(
    _NOW
    + """
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[2] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 5))
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[3]), -1)
end
redis.call('HSET', KEYS[2], 'updated', now)
redis.call('ZADD', KEYS[1], now, ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return 1
"""
)
# KEYS = conversation, turns. False when there is no such conversation.
READ = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)
""")
# KEYS = index, conversation, turns; ARGV = id. 1 if it existed.
FORGET = Script("""
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
""")
# KEYS = index; ARGV = highest score, how many, key prefix. Rows of {id, title, updated,
# messages}; index entries whose conversation has expired are dropped on the way.
LIST = Script("""
local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #rows, 2 do
  local key = ARGV[3] .. ':conv:' .. rows[i]
  local title = redis.call('HGET', key, 'title')
  if title then
    table.insert(out, {rows[i], title, rows[i + 1], redis.call('LLEN', key .. ':turns')})
  else
    redis.call('ZREM', KEYS[1], rows[i])
  end
end
return out
""")
# Extra rows fetched per page, to step over those sharing the cursor's timestamp.
TIES = 16


class RedisConversations:
    def __init__(self, store: Store, max_turns: int, ttl: int, max_per_user: int) -> None:
        self.store = store
        self.max_messages = max_turns * 2
        self.ttl_ms = ttl * 1000
        self.max_per_user = max_per_user

    async def open(self, user: str, conversation_id: str, message: str) -> Opened:
        claimed = await self._run(CLAIM, [_owner(conversation_id)], [user, self.ttl_ms])
        if not claimed:
            raise NotFound
        prefix = keys.user(user)
        names = _keys(user, conversation_id)
        args: list[Any] = [conversation_id, secrets.token_hex(8), title_of(message)]
        args += [self.max_per_user, self.ttl_ms, prefix]
        epoch, raw, evicted = await self._run(OPEN, names, args)
        for old in evicted:  # their claims go with them
            await self._run(UNCLAIM, [_owner(old.decode())], [user])
        return Opened(epoch.decode(), _turns(raw))

    async def append(self, user: str, conversation_id: str, epoch: str, turns: list[Turn]) -> bool:
        items = [json.dumps({"role": t.role, "content": t.content}) for t in clip(turns)]
        names = _keys(user, conversation_id)
        args = [conversation_id, epoch, self.max_messages, self.ttl_ms, *items]
        return bool(await self._run(APPEND, names, args))

    async def history(self, user: str, conversation_id: str) -> list[Turn]:
        names = _keys(user, conversation_id)[1:]
        raw = await self._run(READ, names, [])
        if raw is None:
            raise NotFound
        return _turns(raw)

    async def forget(self, user: str, conversation_id: str) -> None:
        names = _keys(user, conversation_id)
        if not await self._run(FORGET, names, [conversation_id]):
            raise NotFound
        await self._run(UNCLAIM, [_owner(conversation_id)], [user])

    async def listing(self, user: str, cursor: str | None = None, limit: int = PAGE_SIZE) -> Page:
        top, _, after = (cursor or "").partition(":")
        highest = top if top.isdigit() else "+inf"
        prefix = keys.user(user)
        rows = await self._run(
            LIST, [keys.conversations(user)], [highest, limit + 1 + TIES, prefix]
        )
        found = [
            Summary(cid.decode(), title.decode(), int(score) / 1000, int(messages) // 2)
            for cid, title, score, messages in rows
        ]
        if after:  # step over what the previous page ended with, at the cursor's score
            found = [
                s for s in found if not (round(s.updated_at * 1000) == int(top) and s.id >= after)
            ]
        page = found[:limit]
        more = len(found) > limit
        last = page[-1] if page else None
        return Page(page, f"{round(last.updated_at * 1000)}:{last.id}" if more and last else None)

    async def _run(self, script: Script, names: list[str], args: list[Any]) -> Any:
        unavailable = object()
        result = await self.store.run_script("history", script, names, args, unavailable)
        if result is unavailable:
            raise HistoryUnavailable
        return result


def _keys(user: str, conversation_id: str) -> list[str]:
    return [
        keys.conversations(user),
        keys.conversation(user, conversation_id),
        keys.conversation_turns(user, conversation_id),
    ]


def _owner(conversation_id: str) -> str:
    return keys.conversation_owner(conversation_id)


def _turns(raw: list[bytes]) -> list[Turn]:
    return [Turn(**json.loads(item)) for item in raw]
