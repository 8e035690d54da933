"""Two pods (two `serve` instances) on one real Redis, and a rolling restart: a client that
moved to the other pod keeps its reply while the pod generating it drains.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.demo_text import demo_reply
from tests.support.redis import RedisServer, running_redis
from tests.support.service import running_service
from tests.support.sse import read_stream
from tests.support.tokens import bearer, make_token


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _env(redis: RedisServer, scale: str, grace: str) -> dict[str, str]:
    return {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_DEMO_DELAY_SCALE": scale,
        "CHAT_GRACEFUL_TIMEOUT": grace,
        "CHAT_CACHE_TTL": "0",
    }


def test_a_client_moved_to_the_other_pod_gets_everything_while_the_first_drains(
    redis: RedisServer,
) -> None:
    token = make_token(sub="mover")
    message = "rolling deploy"
    with (
        running_service(_env(redis, "0.5", "30"), workers=1) as first,
        running_service(_env(redis, "0.5", "30"), workers=1) as second,
    ):
        with httpx.Client(base_url=first.url, timeout=30) as http:
            request = http.build_request("GET", f"/chat/{message}", headers=bearer(token))
            response = http.send(request, stream=True)
            before = read_stream(response, time.monotonic(), limit=3, chunks=response.iter_raw())
            response.close()  # the phone changes networks
        stream_id = response.headers["x-stream-id"]
        with httpx.Client(base_url=second.url, timeout=30) as http:
            headers = {**bearer(token), "Last-Event-ID": before.events[-1].id}
            with http.stream("GET", f"/chat/streams/{stream_id}", headers=headers) as moved:
                chunks = moved.iter_raw()
                after = read_stream(moved, time.monotonic(), limit=1, chunks=chunks)
                first.proc.send_signal(signal.SIGTERM)  # the first pod is replaced
                rest = read_stream(moved, time.monotonic(), chunks=chunks)
        assert first.proc.wait(30) == 0
    events = before.events + after.events + rest.events
    assert [e.id for e in events] == [f"{stream_id}:{n}" for n in range(1, len(events) + 1)]
    assert events[-1].name == "done"
    assert "".join(e.data["text"] for e in events if e.name == "content") == demo_reply(message)
    ended = [r for r in first.records() if r.get("event") == "generation finished"]
    assert [r["outcome"] for r in ended] == ["done"]


def test_what_still_runs_at_the_deadline_ends_with_shutdown_for_readers_on_any_pod(
    redis: RedisServer,
) -> None:
    token = make_token(sub="late")
    with (
        running_service(_env(redis, "5", "1"), workers=1) as first,
        running_service(_env(redis, "5", "30"), workers=1) as second,
    ):
        with httpx.Client(base_url=first.url, timeout=30) as http:
            request = http.build_request("GET", "/chat/long one", headers=bearer(token))
            response = http.send(request, stream=True)
            before = read_stream(response, time.monotonic(), limit=2, chunks=response.iter_raw())
            response.close()
        stream_id = response.headers["x-stream-id"]
        with httpx.Client(base_url=second.url, timeout=30) as http:
            headers = {**bearer(token), "Last-Event-ID": before.events[-1].id}
            with http.stream("GET", f"/chat/streams/{stream_id}", headers=headers) as moved:
                chunks = moved.iter_raw()
                first.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                rest = read_stream(moved, time.monotonic(), chunks=chunks)
                took = time.monotonic() - signalled
        assert first.proc.wait(30) == 0
    last = rest.events[-1]
    assert (last.name, last.data["code"]) == ("error", "shutdown")
    assert took < 1 + 2  # the grace, then a poll or two
    ended = [r for r in first.records() if r.get("event") == "generation finished"]
    assert [r["outcome"] for r in ended] == ["shutdown"]
    assert json.dumps(rest.events[0].data)  # the rest came through the second pod
