"""Connection limits in front of the app: uvicorn's HTTP/1.1 protocol (httptools) with the
three bounds a server facing the open internet needs and uvicorn lacks.

- Header timeout (CHAT_HEADER_TIMEOUT): a connection gets that long to send a complete
  request head, from the moment it is accepted or its next request begins. uvicorn waits
  forever for the first request (its keep-alive timer only runs between requests), so a
  slowloris client (`GET / HTTP/1.1\\r\\nHost: x\\r\\n`, then nothing) held a socket for
  good. It is answered 408 and closed.
- Header size (CHAT_MAX_HEADER_BYTES): httptools buffers header lines without limit; a head
  larger than the bound is answered 431 (RFC 6585 §5) and closed. The bound leaves room for
  a `GET /chat/{message}` of CHAT_MAX_MESSAGE_CHARS percent-encoded CJK characters.
- Open connections (CHAT_MAX_CONNECTIONS): one past the bound is answered 503 as soon as it
  is accepted, and closed, so a flood of idle sockets cannot use up the worker's file
  descriptors. uvicorn's own `limit_concurrency` answers 503 only once a request's head is
  complete, so idle sockets past it would still each hold a descriptor until then.

Refusals are counted in `chat_connections_refused_total{reason}` and not logged: a flood
must not become a flood of log lines.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .observability import metrics

# Descriptors a worker needs beside its client connections: Redis pools, the listening
# sockets, log and metrics files, the JWKS client. Each client stream of the `openai`
# backend holds one more, to the upstream.
RESERVED_DESCRIPTORS = 256


def _canned(status: int, reason: str, detail: str, extra: bytes = b"") -> bytes:
    body = b'{"detail":"%s"}' % detail.encode("ascii")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (status, reason.encode("ascii"), len(body), extra, body)
    )


TIMED_OUT = _canned(408, "Request Timeout", "request headers took too long")
TOO_LARGE = _canned(431, "Request Header Fields Too Large", "request headers are too large")
TOO_MANY = _canned(503, "Service Unavailable", "too many connections", b"retry-after: 1\r\n")


class GuardedProtocol(HttpToolsProtocol):
    """Set the class attributes with `configure()` before the server starts.

    Its own state is in slots: uvicorn's protocol already keeps 27 attributes in its
    instance dict, and CPython shares a class's dict keys among its instances only up to
    30; five more made every connection's dict a private copy, 1 KiB each (measured).
    """

    __slots__ = ("_awaiting_head", "_head_size", "_head_timer", "_oversized", "_received")

    header_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 65536
    max_connections: ClassVar[int] = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._received = 0  # bytes received while a head is incomplete
        self._head_size = 0  # bytes of the current head's request line and fields
        self._oversized = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(TOO_MANY, "max_connections")
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._oversized:
            return
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._oversized:
            self._refuse(TOO_LARGE, "header_size")
        elif self._awaiting_head:
            # A head that never ends is counted by the bytes it takes, before any field of
            # it is complete; a complete one by its parts, in `on_headers_complete`.
            self._received += len(data)
            if self._received > self.max_header_bytes:
                self._refuse(TOO_LARGE, "header_size")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True
        self._head_size = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._received = 0
        self._disarm_head_timer()
        if self._head_size > self.max_header_bytes:
            self._oversized = True  # answered by `data_received` once the parser returns
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._oversized:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._oversized:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            self._refuse(TIMED_OUT, "header_timeout")

    def _refuse(self, response: bytes, reason: str) -> None:
        metrics.connections_refused.labels(reason).inc()
        self._disarm_head_timer()
        self._awaiting_head = False
        self.transport.write(response)
        self.transport.close()


def configure(header_timeout: float, max_header_bytes: int, max_connections: int) -> int:
    """Set the bounds; returns the connection bound actually used, lowered when the process
    cannot have the file descriptors it needs (after raising its soft limit to the hard)."""
    needed = 2 * max_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        max_connections = max(1, (soft - RESERVED_DESCRIPTORS) // 2)
    GuardedProtocol.header_timeout = header_timeout
    GuardedProtocol.max_header_bytes = max_header_bytes
    GuardedProtocol.max_connections = max_connections
    return max_connections
