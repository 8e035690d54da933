"""A small, strict SSE reader for tests: parses the wire format, keeps comments and timing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Received:
    name: str
    data: Any
    id: str | None
    at: float  # seconds since the request was sent


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[Received] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    raw: bytes = b""

    @property
    def names(self) -> list[str]:
        return [event.name for event in self.events]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.events if e.name == "content")


def parse(raw: bytes) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ("event", fields) or ("comment", {"text": ...}) for each block of the stream."""
    for block in raw.decode("utf-8").split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                yield "comment", {"text": line[1:].strip()}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            yield "event", fields


def read_stream(
    response: httpx.Response,
    started: float,
    limit: int | None = None,
    chunks: Iterator[bytes] | None = None,
) -> Stream:
    """Read events until the end, or until `limit` events. To keep the connection open after
    a limit, pass `chunks=response.iter_raw()` and keep a reference to it: a dropped raw
    iterator closes the response."""
    stream = Stream(status=response.status_code, headers=response.headers)
    buffer = b""
    for chunk in chunks if chunks is not None else response.iter_raw():
        stream.raw += chunk
        buffer += chunk
        now = time.monotonic() - started
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            for kind, fields in parse(block + b"\n\n"):
                if kind == "comment":
                    stream.comments.append(fields["text"])
                else:
                    stream.events.append(
                        Received(fields["event"], json.loads(fields["data"]), fields.get("id"), now)
                    )
        if limit is not None and len(stream.events) >= limit:
            break
    return stream


def stream_chat(
    client: httpx.Client,
    method: str,
    url: str,
    limit: int | None = None,
    **kwargs: Any,
) -> Stream:
    started = time.monotonic()
    with client.stream(method, url, **kwargs) as response:
        if response.status_code != 200:
            response.read()
            stream = Stream(status=response.status_code, headers=response.headers)
            stream.raw = response.content
            return stream
        return read_stream(response, started, limit)
