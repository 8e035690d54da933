"""Events and their wire form: written here, and read back here only.

An event is a name and a JSON object. On the wire it is one block of the WHATWG
Server-Sent Events format, its data one compact JSON line (JSON escapes CR and LF):

    id: <stream>:<n>
    event: <name>
    data: {"text":"Y"}
    <blank line>

Every other module asks this one: the generation encodes each event once (`encode`); the
response cache keeps blocks without their `id:` line (`without_id`) and reads them back
(`decode`); the Redis relay splits what it carries into blocks (`blocks`) and learns each
one's name (`name_of`). Changing the format means changing this module and the page's
parser (static/sse.js), nothing else.

Names: `start`, `thinking`, `content`, then exactly one of the terminal `done` or `error`.
A generation's outcome follows from its last event (`outcome_of`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

NAMES = ("start", "thinking", "content", "done", "error")
TERMINAL = frozenset({"done", "error"})
# A comment line, which every SSE parser ignores: keeps an idle stream's proxies awake.
PING = b": ping\n\n"
END = b"\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One event: `name` goes to the `event:` field, `data` is JSON on one `data:` line.
    `wire`: the event already encoded, as a stream followed from another worker brings it
    (its data then matters to nobody here), to be appended as it is."""

    name: str
    data: dict[str, Any]
    wire: bytes | None = None


class Codec(Protocol):
    """How a generation's events go on the wire. `/chat`'s is this module's (`EVENTS`);
    `/v1/chat/completions` writes OpenAI's chunks (completions.py). Either way each event is
    one or more SSE blocks, each with the event's `id:`, so that resuming, pings and the
    relay work alike."""

    name: str

    def encode(self, event: Event, event_id: bytes) -> bytes: ...


SHUTDOWN = Event("error", {"code": "shutdown", "message": "server is restarting"})
INTERNAL = Event("error", {"code": "internal", "message": "internal error"})
CANCELLED = Event("done", {"reason": "cancelled"})
INTERRUPTED = Event(
    "error", {"code": "interrupted", "message": "the server generating this reply stopped"}
)


def outcome_of(last: str | None) -> str:
    """A generation's outcome from the name of its last event: `done` or `error`."""
    return "done" if last == "done" else "error"


def encode(event: Event, event_id: bytes) -> bytes:
    # orjson writes the same compact UTF-8 as json.dumps(ensure_ascii=False, separators=
    # (",", ":")) at a tenth of the cost; it refuses lone surrogates (which a percent-encoded
    # path can carry), and those take the ASCII-escaping path instead.
    try:
        data = orjson.dumps(event.data)
    except TypeError:
        data = json.dumps(event.data, separators=(",", ":")).encode()
    name = _NAMES.get(event.name) or event.name.encode()
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id, name, data)


class _Events:
    name = "events"

    def encode(self, event: Event, event_id: bytes) -> bytes:
        return encode(event, event_id)


EVENTS: Codec = _Events()


def blocks(blob: bytes) -> list[bytes]:
    """The blocks of encoded events written one after another, each with its blank line."""
    return [block + END for block in blob.split(END)[:-1]]


def name_of(block: bytes) -> str:
    start = block.index(b"event: ") + 7
    return block[start : block.index(b"\n", start)].decode()


def decode(block: bytes) -> Event:
    """The event a block holds (its `id:`, if any, aside). ValueError if it is not one."""
    head, _, data = block.partition(b"\ndata: ")
    name = head[head.index(b"event: ") + 7 :].decode() if b"event: " in head else ""
    if not name or not data.endswith(END):
        raise ValueError("not an encoded event")
    try:
        value = orjson.loads(data[:-2])
    except orjson.JSONDecodeError:
        value = json.loads(data[:-2])  # a lone surrogate, written ASCII-escaped
    if not isinstance(value, dict):
        raise ValueError("an event's data is a JSON object")
    return Event(name, value)


def without_id(block: bytes) -> bytes:
    """The block less its `id:` line: the same event, to be given an id of its own."""
    return block[block.index(b"\n") + 1 :] if block.startswith(b"id: ") else block


_NAMES = {name: name.encode() for name in NAMES}
