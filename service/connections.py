"""Connection bounds in front of the app: uvicorn's HTTP/1.1 protocol (httptools) with the
bounds a server facing the open internet needs and uvicorn lacks.

A connection is always in one phase, and each phase but `BUSY` has a deadline that no
trickle of bytes can move:

- `HEAD`: from accept (or from the first byte of a later request) a connection gets
  CHAT_HEADER_TIMEOUT to send a complete request head; then 408 and close. uvicorn waits
  forever for the first request, so a slowloris client held a socket for good.
- `BODY`: from the end of the head, the whole body must arrive within CHAT_BODY_TIMEOUT (a
  64 KiB body in 10 s is a floor of 6.5 KB/s); then 408 (or, when the answer has begun,
  just close). Nothing bounded a body before: a signed-in `POST /chat` that never sent it
  held its connection for minutes.
- `IDLE`: between requests, the keep-alive timeout. uvicorn cancels its own keep-alive
  timer on any byte and re-arms it only after the next response, so one byte every few
  seconds kept a connection forever; this deadline ignores bytes that begin no request.
- `BUSY`: the app has the request; its own timeouts apply (streams have theirs).

An answer given before the request's body has arrived whole (a 401, 413 or 429 that did
not read it) carries `Connection: close` and the connection closes after it: the rest of
that body would otherwise be read as the next request, or hold the connection while it
trickles. uvicorn adds the header and closes by itself when its cycle's `keep_alive` is
off as the answer starts, so `keep_alive` is off from the end of the head until the body
is complete.

Counts, per worker, each answered 503 at accept (before a byte is read) and closed, so a
flood of idle sockets cannot take the worker's file descriptors:
- CHAT_MAX_CONNECTIONS on the main port;
- CHAT_MAX_CONNECTIONS_PER_ADDRESS from one peer address, unless the peer is one of
  CHAT_TRUSTED_PROXIES (a proxy carries many clients; nginx limits its own, `limit_conn`);
- the metrics port (CHAT_METRICS_PORT) counts apart, with its own small bound: probes are
  answered there too, so no number of client connections can make a probe fail.

Head size (CHAT_MAX_HEADER_BYTES): httptools buffers header lines without limit; a head
larger than the bound is answered 431 (RFC 6585 §5) and closed.

Refusals are counted in `chat_connections_refused_total{reason}` and not logged: a flood
must not become a flood of log lines.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .observability import metrics

# Descriptors a worker needs beside its client connections: Redis pools, the listening
# sockets, log and metrics files, the JWKS client. Each client stream of the `openai`
# backend holds one more, to the upstream.
RESERVED_DESCRIPTORS = 256
# Connections the metrics port holds at once: Prometheus, the kubelet's probes, a person
# with curl. It is never routed publicly (the chart's NetworkPolicy and Service say so).
METRICS_PORT_CONNECTIONS = 64

HEAD, BODY, IDLE, BUSY = range(4)


def _canned(status: int, reason: str, detail: str, extra: bytes = b"") -> bytes:
    body = b'{"detail":"%s"}' % detail.encode("ascii")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (status, reason.encode("ascii"), len(body), extra, body)
    )


HEAD_TIMED_OUT = _canned(408, "Request Timeout", "request headers took too long")
BODY_TIMED_OUT = _canned(408, "Request Timeout", "request body took too long")
TOO_LARGE = _canned(431, "Request Header Fields Too Large", "request headers are too large")
TOO_MANY = _canned(503, "Service Unavailable", "too many connections", b"retry-after: 1\r\n")
TOO_MANY_FROM_ADDRESS = _canned(
    503, "Service Unavailable", "too many connections from this address", b"retry-after: 1\r\n"
)


@dataclass(frozen=True, slots=True)
class Bounds:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_header_bytes: int = 65536
    max_connections: int = 4096
    max_per_address: int = 256
    metrics_port: int | None = None
    trusted: frozenset[str] = frozenset({"127.0.0.1"})
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    trust_all: bool = False

    @classmethod
    def trusting(cls, proxies: Iterable[str], **bounds: Any) -> Bounds:
        """With CHAT_TRUSTED_PROXIES as uvicorn reads them: addresses, networks, or `*`."""
        literal, networks = set(), []
        for entry in proxies:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                literal.add(entry)  # `*`, or a name uvicorn compares as written
        return cls(
            trusted=frozenset(literal),
            trusted_networks=tuple(networks),
            trust_all="*" in literal,
            **bounds,
        )

    def trusts(self, host: str) -> bool:
        if self.trust_all or host in self.trusted:
            return True
        if not self.trusted_networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)


@dataclass(slots=True)
class Counts:
    """The worker's open connections: on the main port, per untrusted peer address, and on
    the metrics port."""

    main: int = 0
    metrics: int = 0
    by_address: dict[str, int] = field(default_factory=dict)


class GuardedProtocol(HttpToolsProtocol):
    """Set `bounds` with `configure()` before the server starts.

    Its own state is in slots: uvicorn's protocol already keeps 27 attributes in its
    instance dict, and CPython shares a class's dict keys among its instances only up to
    30; more made every connection's dict a private copy, 1 KiB each (measured).
    """

    __slots__ = (
        "_address",
        "_head_size",
        "_keep_alive",
        "_on_metrics_port",
        "_oversized",
        "_phase",
        "_received",
        "_timer",
    )

    bounds: ClassVar[Bounds] = Bounds()
    counts: ClassVar[Counts] = Counts()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._phase = HEAD
        self._received = 0  # bytes received while a head is incomplete
        self._head_size = 0  # bytes of the current head's request line and fields
        self._oversized = False
        self._keep_alive = True  # the cycle's own, while a body is outstanding
        self._address: str | None = None  # counted against its per-address bound
        self._on_metrics_port = False

    # --- accept and close ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        bounds, counts = self.bounds, self.counts
        self._arm(HEAD, bounds.header_timeout)
        if (
            bounds.metrics_port is not None
            and self.server
            and self.server[1] == bounds.metrics_port
        ):
            self._on_metrics_port = True
            counts.metrics += 1
            if counts.metrics > METRICS_PORT_CONNECTIONS:
                self._refuse(TOO_MANY, "max_connections")
            return
        counts.main += 1
        if counts.main > bounds.max_connections:
            self._refuse(TOO_MANY, "max_connections")
            return
        host = self.client[0] if self.client else None
        if host is not None and not bounds.trusts(host):
            self._address = host
            held = counts.by_address[host] = counts.by_address.get(host, 0) + 1
            if held > bounds.max_per_address:
                self._refuse(TOO_MANY_FROM_ADDRESS, "max_connections_per_address")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        counts = self.counts
        if self._on_metrics_port:
            counts.metrics -= 1
        else:
            counts.main -= 1
            address = self._address
            if address is not None:
                self._address = None
                left = counts.by_address[address] - 1
                if left:
                    counts.by_address[address] = left
                else:
                    del counts.by_address[address]
        super().connection_lost(exc)

    # --- bytes in --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._oversized:
            return
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._oversized:
            self._refuse(TOO_LARGE, "header_size")
        elif self._phase == HEAD:
            # A head that never ends is counted by the bytes it takes, before any field of
            # it is complete; a complete one by its parts, in `on_headers_complete`.
            self._received += len(data)
            if self._received > self.bounds.max_header_bytes:
                self._refuse(TOO_LARGE, "header_size")
        elif self._phase == BODY and self._timer is None:
            # A head whose body did not come with it: the body's deadline starts now (a
            # request without a body never gets here, and costs no timer).
            self._timer = self.loop.call_later(self.bounds.body_timeout, self._timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        if self._phase != HEAD:  # a request after the first: its head gets the full time
            self._arm(HEAD, self.bounds.header_timeout)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._received = 0
        self._cancel()
        self._phase = BODY
        if self._head_size > self.bounds.max_header_bytes:
            self._oversized = True  # answered by `data_received` once the parser returns
            return
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before:
            # Until the body is whole, an answer closes the connection (see the docstring).
            self._keep_alive, cycle.keep_alive = cycle.keep_alive, False

    def on_body(self, body: bytes) -> None:
        if not self._oversized:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._oversized:
            return
        super().on_message_complete()
        if self._phase == BODY:
            self._cancel()
            self._phase = BUSY
            cycle = self.cycle
            if not cycle.response_started:
                cycle.keep_alive = self._keep_alive

    # --- answers out ---------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self.pipeline:
            return
        # Between requests: the keep-alive time, which bytes that begin no request (or a
        # body nobody reads) cannot extend. uvicorn's own timer is cancelled by any byte.
        self._unset_keepalive_if_required()
        self._arm(IDLE, self.timeout_keep_alive)

    def shutdown(self) -> None:
        self._keep_alive = False
        super().shutdown()

    # --- deadlines -------------------------------------------------------------------------

    def _arm(self, phase: int, seconds: float) -> None:
        self._cancel()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        phase = self._phase
        if phase == HEAD:
            self._refuse(HEAD_TIMED_OUT, "header_timeout")
        elif phase == IDLE:
            self.transport.close()  # an idle keep-alive connection, as uvicorn closes one
        elif phase == BODY:
            cycle = self.cycle
            answered = cycle is None or cycle.response_started
            if cycle is not None:
                # The app hears the client is gone now, and writes nothing more.
                cycle.disconnected = True
                cycle.message_event.set()
            if answered:
                metrics.connections_refused.labels("body_timeout").inc()
                self.transport.close()
            else:
                self._refuse(BODY_TIMED_OUT, "body_timeout")

    def _refuse(self, response: bytes, reason: str) -> None:
        metrics.connections_refused.labels(reason).inc()
        self._cancel()
        self._phase = BUSY
        self.transport.write(response)
        self.transport.close()


def configure(bounds: Bounds) -> int:
    """Set the bounds; returns the connection bound actually used, lowered when the process
    cannot have the file descriptors it needs (after raising its soft limit to the hard)."""
    max_connections = bounds.max_connections
    needed = 2 * max_connections + RESERVED_DESCRIPTORS + METRICS_PORT_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        spare = soft - RESERVED_DESCRIPTORS - METRICS_PORT_CONNECTIONS
        max_connections = max(1, spare // 2)
    GuardedProtocol.bounds = replace(bounds, max_connections=max_connections)
    GuardedProtocol.counts = Counts()
    return max_connections
