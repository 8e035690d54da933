"""Limits fail open only while Redis is unreachable: not because a worker is busy, and not
for a moment after Redis comes back. Real gunicorn, real redis-server.

Before: a Redis call unanswered for 0.5 s of wall time, which a worker with a full event
loop reaches with a healthy Redis, switched every limit off for a second; and a connection
that a Redis restart broke was read as an outage, so a worker let a user past the rate
limit right after `/readyz` said 200.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.redis import RedisServer, running_redis
from tests.support.service import REPO, Service, running_service
from tests.support.sse import read_stream, stream_chat
from tests.support.tokens import bearer, make_token


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _chat(svc: Service, path: str, token: str) -> int:
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        return stream_chat(http, "GET", path, headers=bearer(token)).status


def test_after_a_restart_every_worker_enforces_the_rate_limit_at_once(redis: RedisServer) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_RATE_LIMIT": "5/minute"}
    with running_service(env, workers=2) as svc:
        workers = sorted(svc.worker_pids())
        for pid in workers:  # both workers hold connections to Redis
            with svc.served_by(pid):
                assert _chat(svc, "/chat/warm", make_token(sub=f"warm-{pid}")) == 200
        redis.restart()  # same port; every connection the workers hold is now broken
        deadline = time.monotonic() + 10
        while httpx.get(f"{svc.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.05)  # readiness of another process, polled as a kubelet would
        token = make_token(sub="after-restart")
        statuses = []
        for n in range(6):
            with svc.served_by(workers[n % 2]):
                statuses.append(_chat(svc, f"/chat/after-{n}", token))
    assert statuses == [200] * 5 + [429]
    # No request read a connection the restart broke as an outage. (A worker's inbox poll,
    # op "resume", may run into the restart itself in the 0.1 s after its last reply: that
    # Redis was down then is true.)
    outages = [r for r in svc.records() if r.get("event") == "redis unavailable; failing open"]
    assert [r for r in outages if r.get("op") != "resume"] == []


# Long enough that replaying it (a cache hit, no pauses) keeps a worker's loop busy.
LOAD_MESSAGE = "a" * 3000


def test_a_worker_at_full_cpu_still_enforces_the_rate_limit_and_the_stream_cap(
    redis: RedisServer,
) -> None:
    """One worker, its loop driven to full CPU by replays of a long cached reply, while one
    user tries to exceed the rate limit and another the open-stream cap."""
    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_RATE_LIMIT": "5/minute",
        "CHAT_MAX_STREAMS_PER_USER": "2",
        # Pauses hold the capped user's streams open; cached replays have none.
        "CHAT_DEMO_DELAY_SCALE": "0.05",
        # The load's many users replay the one warm reply.
        "CHAT_CACHE_SCOPE": "global",
    }
    with running_service(env, workers=1) as svc:
        warm = _chat(svc, f"/chat/{LOAD_MESSAGE}", make_token(sub="warm"))
        assert warm == 200
        load_args = ["--seconds", "12", "--concurrency", "250", "--message", LOAD_MESSAGE]
        load = subprocess.Popen(
            [sys.executable, "-m", "tests.support.load", str(svc.port), *load_args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            svc.wait_for_records(lambda r: r.get("cache") == "HIT", count=100, timeout=30)
            # The rate limit: five, then refusals, however slow each answer is.
            token = make_token(sub="rate-tester")
            waits, statuses = [], []
            for n in range(8):
                started = time.monotonic()
                with httpx.Client(base_url=svc.url, timeout=60) as http:
                    response = http.get(f"/chat/rate-{n}", headers=bearer(token))
                statuses.append(response.status_code)
                waits.append(time.monotonic() - started)
            # The stream cap: two streams held open, a third refused.
            capped = bearer(make_token(sub="stream-tester"))
            clients = [httpx.Client(base_url=svc.url, timeout=60) for _ in range(3)]
            try:
                held = []
                for n, http in enumerate(clients[:2]):
                    request = http.build_request(
                        "GET", f"/chat/hold-{n}-{'b' * 1500}", headers=capped
                    )
                    response = http.send(request, stream=True)
                    chunks = response.iter_raw()
                    first = read_stream(response, time.monotonic(), limit=1, chunks=chunks)
                    assert first.names[0] == "start"
                    held.append((response, chunks))
                third = clients[2].get("/chat/third", headers=capped)
                still_open = [not response.is_closed for response, _ in held]
                for response, _ in held:
                    response.close()
            finally:
                for http in clients:
                    http.close()
        finally:
            out, _ = load.communicate(timeout=60)
    result = json.loads(out)
    assert result["streams"] >= 100 and set(result["statuses"]) == {"200"}
    # The worker was busy: some answer took longer than the old 0.5 s Redis deadline.
    assert max(waits) > 0.5, waits
    assert statuses == [200] * 5 + [429] * 3, (statuses, waits)
    assert still_open == [True, True]
    assert third.status_code == 429, third.text
    assert third.json()["detail"] == "too many open streams"
    assert not [line for line in svc.lines if "redis unavailable" in line]
