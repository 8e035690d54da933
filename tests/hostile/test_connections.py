"""Slowloris, oversized heads and connection floods against a real `serve` (one worker, so
that every count is that worker's).

Before these bounds, a connection that sent `GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n` and
then nothing stayed open for minutes, and nothing bounded a worker's connections.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.service import Service, running_service
from tests.support.tokens import bearer

HEADER_TIMEOUT = 1.0
MAX_CONNECTIONS = 40
HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def guarded() -> Iterator[Service]:
    env = {
        "CHAT_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "CHAT_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "CHAT_IP_RATE_LIMIT": "100000/minute",
    }
    with running_service(env, workers=1) as svc:
        yield svc


def _connect(service: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic()
        received += chunk


def test_a_half_sent_request_is_closed_after_the_header_timeout(guarded: Service) -> None:
    with _connect(guarded) as sock:
        opened = time.monotonic()
        sock.sendall(HALF_SENT)
        response, closed = _read_until_closed(sock, timeout=10)
    survived = closed - opened
    assert HEADER_TIMEOUT * 0.9 <= survived <= HEADER_TIMEOUT + 1.0, survived
    assert response.startswith(b"HTTP/1.1 408 ")
    assert response.endswith(b'{"detail":"request headers took too long"}')


def test_a_trickling_head_does_not_extend_its_time(guarded: Service) -> None:
    """The timer runs from the start of the head, not from the last byte."""
    with _connect(guarded) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        with contextlib.suppress(OSError):  # the server may close while we trickle
            for _ in range(int(HEADER_TIMEOUT / 0.2) * 3):
                sock.sendall(b"X")
                time.sleep(0.2)  # the attack's own pacing, not synchronisation
        _, closed = _read_until_closed(sock, timeout=10)
    assert closed - opened <= HEADER_TIMEOUT + 1.0


def test_a_connection_that_sends_nothing_is_closed(guarded: Service) -> None:
    with _connect(guarded) as sock:
        opened = time.monotonic()
        response, closed = _read_until_closed(sock, timeout=10)
    assert HEADER_TIMEOUT * 0.9 <= closed - opened <= HEADER_TIMEOUT + 1.0
    assert response.startswith(b"HTTP/1.1 408 ")


def test_oversized_heads_get_431(guarded: Service) -> None:
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: b\r\n" * 8000 + b"\r\n",
    ):
        with _connect(guarded) as sock:
            with contextlib.suppress(OSError):  # refused mid-send: the rest is not read
                sock.sendall(head)
            response, _ = _read_until_closed(sock, timeout=10)
        assert response.startswith(b"HTTP/1.1 431 "), response[:80]


def test_the_longest_valid_message_in_a_path_still_fits(guarded: Service) -> None:
    """The head bound leaves room for 4,000 CJK characters percent-encoded (36 KB)."""
    message = "你" * 4000
    with httpx.Client(base_url=guarded.url, timeout=30) as http:
        response = http.get(f"/chat/{quote(message)}", headers=bearer())
    assert response.status_code == 200
    assert "event: done" in response.text


@pytest.fixture
def crowded() -> Iterator[Service]:
    # Held sockets must outlive the test's own pace: a long header timeout.
    env = {"CHAT_HEADER_TIMEOUT": "60", "CHAT_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    with running_service(env, workers=1) as svc:
        yield svc


def test_past_max_connections_new_connections_get_503_and_held_ones_are_served(
    crowded: Service,
) -> None:
    """A worker holds MAX_CONNECTIONS idle sockets; each one past that is answered 503 at
    once and closed, so a flood cannot use up its file descriptors. The held ones still
    get their answers."""
    extra = 15
    sockets = [_connect(crowded) for _ in range(MAX_CONNECTIONS + extra)]
    try:
        refused: set[socket.socket] = set()
        deadline = time.monotonic() + 10
        while len(refused) < extra and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in sockets if s not in refused], [], [], 1)
            refused.update(readable)
        assert len(refused) == extra
        for sock in refused:
            response, _ = _read_until_closed(sock, timeout=5)
            assert response.startswith(b"HTTP/1.1 503 "), response[:80]
            assert b"retry-after: 1" in response
        # While the worker is full, one more is refused too: a status, not a hang.
        with _connect(crowded) as one_more:
            response, _ = _read_until_closed(one_more, timeout=5)
        assert response.startswith(b"HTTP/1.1 503 ")
        # Every held socket is a live connection: it gets its answer.
        held = [s for s in sockets if s not in refused]
        assert len(held) == MAX_CONNECTIONS
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response, _ = _read_until_closed(sock, timeout=5)
            assert response.startswith(b"HTTP/1.1 200 "), response[:80]
    finally:
        for sock in sockets:
            sock.close()
    assert metric(crowded.url, "chat_connections_refused_total", '{reason="max_connections"}') == (
        extra + 1
    )
