"""Connections held without a token, or without a body, or by a trickle of bytes, against a
real `serve` (one worker, so that every count is that worker's).

Before: 20 sockets that each sent a complete `POST /chat` head with `Content-Length: 60000`
and no token got their 401, sent one more byte and went quiet; the sockets stayed open for
as long as the attacker liked, and with CHAT_MAX_CONNECTIONS=20 a real user's `/usage` and
`/healthz` (on the metrics port too) got 503. A signed-in `POST /chat` that sent no body
was held for more than 75 s. Kubernetes restarts a pod whose `/healthz` answers 503, so
this was a restart-any-pod-at-will.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.service import LIMITS_OFF, Service, free_port, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer, make_token

DEADLINE = 1.5  # CHAT_HEADER_TIMEOUT and CHAT_BODY_TIMEOUT here
KEEP_ALIVE = 5.0  # gunicorn's keepalive (service/server.py)
ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to loopback; not a trusted proxy
UNSIGNED_POST = (
    b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 60000\r\n\r\n"
)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it is still open after `seconds`."""
    received = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def _metrics_url(svc: Service) -> str:
    return f"http://127.0.0.1:{svc.env['CHAT_METRICS_PORT']}"


@pytest.fixture
def tight() -> Iterator[Service]:
    env = {
        "CHAT_HEADER_TIMEOUT": str(DEADLINE),
        "CHAT_BODY_TIMEOUT": str(DEADLINE),
        "CHAT_MAX_CONNECTIONS": "20",
        "CHAT_METRICS_PORT": str(free_port()),
        "CHAT_IP_RATE_LIMIT": "100000/minute",
    }
    with running_service(env, workers=1) as svc:
        yield svc


def test_twenty_unsigned_bodies_cannot_hold_the_worker(tight: Service) -> None:
    """The issue's attack, step by step: each 401 comes with `Connection: close` and the
    server closes the socket itself, however the attacker goes on."""
    sockets = [_connect(tight.port) for _ in range(20)]
    try:
        for sock in sockets:
            sock.sendall(UNSIGNED_POST)
        answers = []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendall(b"{")  # one more byte, then quiet
            answers.append(_closed_within(sock, 5))
        assert all(a is not None for a in answers), "a socket was left open"
        for answer in answers:
            assert answer is not None and answer.startswith(b"HTTP/1.1 401 ")
            assert b"\r\nconnection: close\r\n" in answer.lower()
        with httpx.Client(base_url=tight.url, timeout=10) as http:
            assert http.get("/usage", headers=bearer()).status_code == 200
            assert http.get("/healthz").status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_a_signed_in_post_without_its_body_is_cut_at_the_body_deadline(tight: Service) -> None:
    token = make_token().encode()
    with _connect(tight.port) as sock:
        sent = time.monotonic()
        sock.sendall(
            UNSIGNED_POST.replace(
                b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer " + token + b"\r\n"
            )
        )
        sock.sendall(b'{"message": "h')  # a start, then nothing
        answer = _closed_within(sock, DEADLINE + 5)
        took = time.monotonic() - sent
    assert answer is not None, "the connection outlived the body deadline"
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body took too long" in answer
    assert DEADLINE * 0.9 <= took <= DEADLINE + 2
    refused = metric(
        _metrics_url(tight), "chat_connections_refused_total", '{reason="body_timeout"}'
    )
    assert refused == 1
    tight.wait_for_records(lambda r: r.get("status") == 499 and r.get("route") == "/chat")
    assert not [r for r in tight.records() if r.get("exception") or r.get("level") == "error"]


def test_a_trickle_of_bytes_cannot_keep_an_idle_connection(tight: Service) -> None:
    """uvicorn's keep-alive timer was cancelled by any byte and re-armed only after the next
    response; blank lines between requests begin no request and never end the wait."""
    with _connect(tight.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        closed = None
        with contextlib.suppress(OSError):
            while time.monotonic() - answered < KEEP_ALIVE + 5:
                sock.sendall(b"\r\n")
                if _closed_within(sock, 0.5) is not None:
                    closed = time.monotonic()
                    break
    assert closed is not None, "a trickle kept the connection open"
    assert closed - answered <= KEEP_ALIVE + 1.5


def test_connections_per_address_are_bounded_and_trusted_proxies_are_not() -> None:
    env = {"CHAT_MAX_CONNECTIONS_PER_ADDRESS": "5", "CHAT_HEADER_TIMEOUT": "30"}
    with running_service(env, workers=1) as svc:
        mine = [_connect(svc.port, ATTACKER) for _ in range(7)]
        proxy = [_connect(svc.port) for _ in range(10)]  # 127.0.0.1: CHAT_TRUSTED_PROXIES
        try:
            refused = [a for a in (_closed_within(s, 1) for s in mine) if a is not None]
            assert len(refused) == 2
            assert all(r.startswith(b"HTTP/1.1 503 ") for r in refused)
            assert all(b"too many connections from this address" in r for r in refused)
            for sock in proxy:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = _closed_within(sock, 5)
                assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in mine + proxy:
                sock.close()
        reason = '{reason="max_connections_per_address"}'
        assert metric(svc.url, "chat_connections_refused_total", reason) == 2


def test_probes_answer_on_the_metrics_port_when_the_main_port_is_full(tight: Service) -> None:
    metrics_port = int(tight.env["CHAT_METRICS_PORT"])
    held = [_connect(tight.port) for _ in range(20)]
    try:
        with _connect(tight.port) as one_more:
            answer = _closed_within(one_more, 5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 503 ")
        with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
            assert http.get("/metrics").status_code == 200
            assert http.get("/chat/hi", headers=bearer()).status_code == 404
    finally:
        for sock in held:
            sock.close()


def test_six_hundred_held_sockets_from_one_address_fail_no_probe_and_no_user() -> None:
    """The attack at scale, from one address that is not a trusted proxy: each socket
    sends an unsigned head and then a trickle, or half a head, or a signed head and no
    body. Meanwhile a real user chats and the metrics port's `/healthz` is asked every
    0.2 s. Every answer is 200, every attacker socket is closed by its deadline, and the
    log has no traceback."""
    metrics_port = free_port()
    env = {
        "CHAT_HEADER_TIMEOUT": str(DEADLINE),
        "CHAT_BODY_TIMEOUT": str(DEADLINE),
        "CHAT_METRICS_PORT": str(metrics_port),
        "CHAT_IP_RATE_LIMIT": "100000/minute",
        **LIMITS_OFF,  # the real user chats as fast as the worker answers
    }
    signed = UNSIGNED_POST.replace(
        b"Host: x\r\n", b"Host: x\r\n" + b"Authorization: Bearer " + make_token().encode() + b"\r\n"
    )
    heads = (UNSIGNED_POST + b"{", b"POST /chat HTTP/1.1\r\nHost: x\r\n", signed)
    with running_service(env, workers=1) as svc:
        probes: list[int] = []
        chats: list[str] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}", timeout=5) as http:
                while not stop.is_set():
                    try:
                        probes.append(http.get("/healthz").status_code)
                    except httpx.HTTPError as exc:
                        probes.append(-1)
                        chats.append(f"probe: {exc!r}")
                    stop.wait(0.2)

        def chat() -> None:
            with httpx.Client(base_url=svc.url, timeout=10) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    stream = stream_chat(http, "GET", f"/chat/real-{n}", headers=bearer())
                    chats.append("done" if stream.names[-1:] == ["done"] else str(stream.status))

        workers = [threading.Thread(target=probe), threading.Thread(target=chat)]
        for worker in workers:
            worker.start()
        sockets: list[socket.socket] = []
        try:
            # All connected first (well within the head deadline), then each sends.
            sockets += [_connect(svc.port, ATTACKER) for _ in range(600)]
            for n, sock in enumerate(sockets):
                with contextlib.suppress(OSError):  # refused at accept: that is an answer
                    sock.sendall(heads[n % 3])
            started = time.monotonic()
            open_sockets = list(sockets)
            answers = dict.fromkeys(sockets, b"")
            while open_sockets and time.monotonic() - started < 2 * DEADLINE + 5:
                readable, _, _ = select.select(open_sockets, [], [], 0.5)
                for sock in readable:
                    with contextlib.suppress(OSError):
                        if chunk := sock.recv(65536):
                            answers[sock] += chunk
                            continue
                    open_sockets.remove(sock)
            lived = time.monotonic() - started
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
            for sock in sockets:
                sock.close()
        refused = metric(
            _metrics_url(svc),
            "chat_connections_refused_total",
            '{reason="max_connections_per_address"}',
        )

    assert open_sockets == [], f"{len(open_sockets)} attacker sockets outlived the deadlines"
    assert lived <= 2 * DEADLINE + 5
    statuses = Counter(answer[:12] for answer in answers.values())
    # Unsigned: 401 and closed; half a head, or a signed head and no body: 408 at the
    # deadline; past 256 at once from the address (the default bound): 503 at accept.
    assert set(statuses) <= {b"HTTP/1.1 401", b"HTTP/1.1 408", b"HTTP/1.1 503"}, statuses
    assert statuses[b"HTTP/1.1 503"] == refused > 0
    assert probes and set(probes) == {200}, probes
    assert chats and set(chats) == {"done"}, chats
    assert not [r for r in svc.records() if r.get("exception") or r.get("level") == "error"]
