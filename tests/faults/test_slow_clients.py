"""Clients that ask for a long stream and never read it.

Twenty raw sockets each POST a long message (CHAT_DEMO_DELAY_SCALE=0, so the server writes as
fast as it can) and then read nothing. For the server's writes to block at all, the socket
buffers between us must fill first, and on loopback Linux grows a connection's send buffer
to ~4 MB (the MSS is 64 KiB there, and the send buffer is sized in segments). So each client
socket asks for a small receive buffer (SO_RCVBUF 4 KiB) and advertises a small MSS
(TCP_MAXSEG 536, as a poor mobile link would); measured here, the server's kernel then
queues ~120 KB and uvicorn ~50 KB before `send` blocks, and a 30,000-character reply
(~1.3 MB of events, one ~44-byte event per character) is many times that.

The service must cut each one off after CHAT_SSE_SEND_TIMEOUT (its keep-alive task checks a
stalled send once a tick of min(ping, send timeout) seconds), log it `disconnected`, hold
no more than flow control allows per stalled client (measured while they stall, after a
first round has settled the allocators), and let go of the connection.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.metrics import wait_for_metric
from tests.support.procfs import peer_ports, total_rss_bytes
from tests.support.service import LIMITS_OFF, Service, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer, make_token

CLIENTS = 20
SEND_TIMEOUT = 2.0
TICK = 1.0  # CHAT_SSE_PING_SECONDS; the stall check runs every min(ping, send timeout)
# A reply of ~1.3 MB of events: a server that buffered it all for a client that does not
# read would hold that much per client, where flow control holds a few hundred KiB.
MESSAGE_CHARS = 30_000
MIB = 1024 * 1024
RELEASE_WAIT = 5.0  # after the last cut-off, how long the workers may still hold a socket


@dataclass
class Outcome:
    access: dict[str, dict[str, Any]]
    rss_before: int
    rss_stalled: int  # while all the clients sit on their stalled streams
    rss_after: int
    active_settled_s: float
    still_held: dict[int, set[int]]  # worker pid -> client ports it holds after RELEASE_WAIT
    released_after_s: float | None  # since the last cut-off, when no worker held any

    def __repr__(self) -> str:  # pytest shows this on failure; the access lines are long
        held = {pid: len(ports) for pid, ports in self.still_held.items()}
        return f"Outcome({len(self.access)} access lines, still held per worker {held})"


def _never_reading_client(port: int, number: int, label: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"message": f"{label}-{number} ".ljust(MESSAGE_CHARS, "x")}).encode()
    head = (
        "POST /chat HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Bearer {make_token(sub=f'slow-{number % 4}')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {label}-{number}\r\n"
        "\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


@pytest.fixture(scope="module")
def outcome() -> Iterator[Outcome]:
    """Run the scenario twice; the tests below each judge one side of what happened in the
    second round (the first settles the allocators)."""
    env = {
        "CHAT_DEMO_DELAY_SCALE": "0",
        "CHAT_SSE_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "CHAT_SSE_PING_SECONDS": str(TICK),
        "CHAT_MAX_MESSAGE_CHARS": str(MESSAGE_CHARS),
        **LIMITS_OFF,
        "CHAT_CACHE_TTL": "0",
        # A client cut off is gone for good: its generation goes with it, and the next
        # round measures the stalls alone (a resumable one keeps up to
        # CHAT_RESUME_MAX_BYTES of its reply for CHAT_RESUME_WINDOW).
        "CHAT_RESUME_WINDOW": "0",
    }
    with running_service(env, workers=2) as svc:
        workers = svc.worker_pids()
        # Warm both workers up on long replies read normally, a new connection each.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=svc.url, timeout=30, limits=limits) as http:
            for number in range(4):
                long = {"message": f"warm-{number} ".ljust(MESSAGE_CHARS, "x")}
                warm = stream_chat(http, "POST", "/chat", json=long, headers=bearer())
                assert warm.names[-1] == "done"
        _stall(svc, workers, "first")
        outcome = _stall(svc, workers, "slow")
    outcome.access = {
        r["request_id"]: r
        for r in svc.records()
        if r["event"] == "stream finished" and r["request_id"].startswith("slow-")
    }
    yield outcome


def _stall(svc: Service, workers: set[int], label: str) -> Outcome:
    rss_before = total_rss_bytes(workers)
    clients = [_never_reading_client(svc.port, n, label) for n in range(CLIENTS)]
    try:
        client_ports = {sock.getsockname()[1] for sock in clients}
        wait_for_metric(svc.url, "chat_streams_active", float(CLIENTS))
        rss_stalled = total_rss_bytes(workers)
        svc.wait_for_records(
            lambda record: str(record.get("request_id", "")).startswith(f"{label}-"),
            count=CLIENTS,
            timeout=SEND_TIMEOUT + TICK + 15,
        )
        cut_at = time.monotonic()
        rss_after = total_rss_bytes(workers)
        active_settled = wait_for_metric(svc.url, "chat_streams_active", 0.0)
        released_after = None
        while True:
            held = {pid: peer_ports(pid, svc.port) & client_ports for pid in workers}
            if not any(held.values()):
                released_after = time.monotonic() - cut_at
                break
            if time.monotonic() - cut_at > RELEASE_WAIT:
                break
            time.sleep(0.1)  # the kernel's view of another process; nothing to await
    finally:
        for sock in clients:
            sock.close()
    return Outcome({}, rss_before, rss_stalled, rss_after, active_settled, held, released_after)


def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout(outcome: Outcome) -> None:
    durations = sorted(line["duration_ms"] / 1000 for line in outcome.access.values())
    per_client = (outcome.rss_stalled - outcome.rss_before) / CLIENTS
    print(
        f"cut-offs after {durations[0]:.2f}-{durations[-1]:.2f} s; worker RSS "
        f"{outcome.rss_before / MIB:.1f} MiB before, {outcome.rss_stalled / MIB:.1f} with "
        f"{CLIENTS} stalled clients ({per_client / 1024:.0f} KiB each), "
        f"{outcome.rss_after / MIB:.1f} after the cut-offs; bytes sent before the stall: "
        f"{sorted({line['bytes'] for line in outcome.access.values()})}"
    )
    assert sorted(outcome.access) == sorted(f"slow-{n}" for n in range(CLIENTS))
    for line in outcome.access.values():
        assert line["outcome"] == "disconnected", line
        assert line["status"] == 200
        # The reply was never all written: the client's window closed long before its end.
        assert line["events"] < MESSAGE_CHARS
    # Not before the send timeout, and no later than one more tick of the stall check.
    assert durations[0] >= SEND_TIMEOUT * 0.9
    assert durations[-1] <= SEND_TIMEOUT + TICK + 1.0
    # While stalled, each client costs the worker what flow control lets it buffer, far
    # less than its whole reply; once cut off, nothing stays behind.
    assert per_client < 512 * 1024, per_client
    assert outcome.rss_after - outcome.rss_before < CLIENTS * 512 * 1024


def test_a_cut_off_client_no_longer_holds_a_worker_connection(outcome: Outcome) -> None:
    """Cutting a stream off must free its connection too: a socket kept open with its
    unsent buffers, for as long as the client cares to sit on it, is the memory and file
    descriptors the send timeout exists to reclaim."""
    assert outcome.active_settled_s < 5
    held = {pid: len(ports) for pid, ports in outcome.still_held.items() if ports}
    assert outcome.released_after_s is not None, (
        f"{RELEASE_WAIT} s after the last cut-off the workers still hold {held} of the "
        f"{CLIENTS} slow clients' connections"
    )
