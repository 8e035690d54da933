"""Every Redis key the service uses, named in one place.

    chat:u:{U}                      a user's keys: U = the first 32 hex digits of SHA-256(sub),
                                    the Cluster hash tag, so one script may touch several
      chat:rate:LIMITER/user:chat:u:{U}/N/1/minute   the chat rate's window (`limits` names it)
      chat:rate:LIMITER/resume:chat:u:{U}/...        the resume rate's window
      chat:u:{U}:streams            sorted set: open-stream leases (id -> expiry, Redis's clock)
      chat:u:{U}:tokens             hash: the token budget's window (start, used, held, r:<id>)
      chat:u:{U}:convs              sorted set: conversation id -> last use
      chat:u:{U}:conv:<id>          hash: epoch, title, updated
      chat:u:{U}:conv:<id>:turns    list: the last CHAT_HISTORY_TURNS turns, JSON
      chat:u:{U}:s:<stream>:log     stream: a generation's events, one entry per loop turn
      chat:u:{U}:s:<stream>:meta    hash: its user, worker and state
      chat:u:{U}:s:<stream>:readers a reader elsewhere follows it (a lease)
      chat:u:{U}:s:<stream>:news    channel (pub/sub): an entry or the end was published
    chat:rate:LIMITER/ip:{A}/...    an address's window: A = 32 hex digits of SHA-256(address)
    chat:conv-owner:<id>            the user who claimed a conversation id
    chat:cache:v2:{D}               a cached reply: D = SHA-256 of backend, model, message
      chat:cache:v2:{D}:lock        the single-flight lock of whoever generates it
    chat:holder:<holder>            a cache-lock holder's heartbeat (one per worker)
    chat:w:<worker>:stop            a worker's inbox of streams to stop
    chat:w:<worker>:alive           a worker's heartbeat, while it runs generations

What reaches a key from outside is hashed (a user's `sub`, a client address) or confined to
an alphabet with no separator in it (conversation ids: A-Za-z0-9._-; stream ids and worker
ids are made here, URL-safe base64 and hex). The conversation scripts (conversations/
in_redis.py) build `<prefix>:conv:<id>` inside Lua for the ids they evict; `user()` is the
prefix they are given.
"""

from __future__ import annotations

import functools
import hashlib


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=1024)
def user(sub: str) -> str:
    """The prefix of every key of one user's: in one Cluster hash slot. A hash of the name,
    not the name: a `sub` may hold `{` or `}`, which would move the tag. Remembered for the
    last users seen: a running stream's publish names its keys with each event, and a
    SHA-256 each time (0.8 µs; 0.09 remembered) is 3% of a core at 700 paced streams.
    Keeping each stream's key names instead cost 0.4 KiB per stream."""
    return f"chat:u:{{{_tag(sub)}}}"


def rate_window(sub: str) -> str:
    """The identity of the user's chat-rate window (`limits` adds its own prefix and the
    rate to it)."""
    return f"user:{user(sub)}"


def resume_window(sub: str) -> str:
    """The user's resume-rate window: a key of its own, whatever the two rates are."""
    return f"resume:{user(sub)}"


def address_window(address: str) -> str:
    """A client address's window (failed authentications, unauthenticated streams)."""
    return f"ip:{{{_tag(address)}}}"


def stream_slots(sub: str) -> str:
    return f"{user(sub)}:streams"


def token_budget(sub: str) -> str:
    return f"{user(sub)}:tokens"


def conversations(sub: str) -> str:
    return f"{user(sub)}:convs"


def conversation(sub: str, conversation_id: str) -> str:
    return f"{user(sub)}:conv:{conversation_id}"


def conversation_turns(sub: str, conversation_id: str) -> str:
    return f"{conversation(sub, conversation_id)}:turns"


def conversation_owner(conversation_id: str) -> str:
    return f"chat:conv-owner:{conversation_id}"


def cache_entry(digest: str) -> str:
    # v2: entries are SSE blocks without ids (events.without_id); v1 entries, JSON lists,
    # are never read. The digest is the hash tag: an entry and its lock share a slot.
    return f"chat:cache:v2:{{{digest}}}"


def cache_lock(entry: str) -> str:
    return f"{entry}:lock"


def cache_holder(holder: str) -> str:
    return f"chat:holder:{holder}"


def stream(sub: str, stream_id: str) -> tuple[str, str, str]:
    """A stream's log, meta and readers keys, under its user's hash tag: in a Cluster, the
    node that holds the user's limits holds the stream too."""
    base = f"{user(sub)}:s:{stream_id}"
    return f"{base}:log", f"{base}:meta", f"{base}:readers"


def stream_news(sub: str, stream_id: str) -> str:
    """The channel on which a stream's publisher announces each entry and the end (a
    pub/sub channel, not a key; under the user's hash tag all the same)."""
    return f"{user(sub)}:s:{stream_id}:news"


def worker_inbox(worker: str) -> str:
    return f"chat:w:{worker}:stop"


def worker_alive(worker: str) -> str:
    return f"chat:w:{worker}:alive"
