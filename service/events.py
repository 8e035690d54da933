"""The event type and its wire encoding (the WHATWG Server-Sent Events format)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

PING = b": ping\n\n"
TERMINAL = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: `name` goes to the `event:` field, `data` is JSON on one `data:` line."""

    name: str
    data: dict[str, Any]


SHUTDOWN = Event("error", {"code": "shutdown", "message": "server is restarting"})


def encode(event: Event, event_id: bytes) -> bytes:
    # JSON escapes CR and LF inside strings, so the payload is always one `data:` line.
    # orjson writes the same compact UTF-8 as json.dumps(ensure_ascii=False, separators=
    # (",", ":")) at a tenth of the cost; it refuses lone surrogates (which a percent-encoded
    # path can carry), and those take the ASCII-escaping path instead.
    try:
        data = orjson.dumps(event.data)
    except TypeError:
        data = json.dumps(event.data, separators=(",", ":")).encode()
    name = _NAMES.get(event.name) or event.name.encode()
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id, name, data)


_NAMES = {name: name.encode() for name in ("start", "thinking", "content", "done", "error")}
