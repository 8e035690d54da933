"""Redis-backed limits and cache across workers and processes, and Redis going away.

Each test runs the real service (gunicorn, 2 workers) against a real redis-server that the
test starts on a free port, so it can kill, restart and freeze it.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.redis.keys import user as user_prefix
from tests.support.metrics import metric
from tests.support.redis import RedisServer
from tests.support.redis_topologies import redis_of_kind
from tests.support.service import Service, running_service
from tests.support.sse import Stream, read_stream, stream_chat
from tests.support.tokens import bearer, make_token


@pytest.fixture
def redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server of the test's own; for the tests marked `BOTH`, then the session's
    Cluster of three primaries too (emptied first). The Cluster stands in where a test
    only needs Redis to work: the outage tests kill and freeze one server."""
    with redis_of_kind(request, getattr(request, "param", "redis")) as made:
        assert made is not None
        yield made


# The feature tests: against one server and against a Cluster.
BOTH = pytest.mark.parametrize("redis", ["redis", "cluster"], indirect=True)


def _metric(service: Service, name: str, labels: str = "") -> float:
    return metric(service.url, name, labels)


def _fresh_get(service: Service, path: str, **kwargs: object) -> Stream:
    # A new connection each time, so the kernel spreads requests over both workers.
    with httpx.Client(base_url=service.url, timeout=30) as http:
        return stream_chat(http, "GET", path, **kwargs)  # type: ignore[arg-type]


@BOTH
def test_rate_limit_is_counted_across_workers_and_per_user(redis: RedisServer) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_RATE_LIMIT": "5/minute"}
    with running_service(env, workers=2) as svc:
        alice = bearer(make_token(sub="alice"))
        workers = sorted(svc.worker_pids())
        results = []
        for n in range(12):  # each worker in turn: per-worker counting would allow 10
            with svc.served_by(workers[n % 2]):
                results.append(_fresh_get(svc, "/chat/hi", headers=alice))

        statuses = [r.status for r in results]
        # Per-worker memory would let up to 10 through; one Redis budget lets exactly 5.
        assert statuses == [200] * 5 + [429] * 7
        remaining = [int(r.headers["x-ratelimit-remaining"]) for r in results[:5]]
        assert remaining == [4, 3, 2, 1, 0]
        assert all(r.headers["x-ratelimit-limit"] == "5" for r in results)
        refused = results[5]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert 1 <= int(refused.headers["x-ratelimit-reset"]) <= 60
        assert refused.headers["content-type"] == "application/json"
        # Another user has a budget of their own; POST and GET share one.
        bob = bearer(make_token(sub="bob"))
        assert _fresh_get(svc, "/chat/hi", headers=bob).status == 200
        with httpx.Client(base_url=svc.url) as http:
            posted = http.post("/chat", json={"message": "hi"}, headers=alice)
        assert posted.status_code == 429
        assert _metric(svc, "chat_rate_limited_total", '{limit="rate"}') >= 8


@BOTH
def test_a_request_over_its_rate_keeps_no_slot_and_no_cache_lock(redis: RedisServer) -> None:
    # The rate check, the slot and the cache look-up share one round trip, so a refused
    # request has taken a slot and a single-flight lock by the time it knows: it must hand
    # both back before it answers.
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_RATE_LIMIT": "1/minute"}
    store = redis.client()
    with running_service(env, workers=2) as svc:
        carol = bearer(make_token(sub="carol"))
        assert _fresh_get(svc, "/chat/first", headers=carol).names[-1] == "done"
        refused = [_fresh_get(svc, f"/chat/second {n}", headers=carol) for n in range(6)]
        assert [r.status for r in refused] == [429] * 6
        # Her keys carry her hash tag (one Cluster slot for all of a user's keys).
        carols = user_prefix("carol")
        assert store.zcard(f"{carols}:streams") == 0
        assert list(store.scan_iter("chat:cache:*:lock")) == []
        # The one that streamed was stored; none of the refused ones left anything.
        assert len(list(store.scan_iter("chat:cache:*"))) == 1
        # Once a worker has seen carol over her limit, it refuses her without asking Redis
        # until the window ends: the count holds the first request plus one per worker.
        [rate_key] = store.scan_iter(f"chat:rate*{carols.replace('{', '[{]')}*")
        assert 2 <= int(store.get(rate_key) or 0) <= 3
        assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)


def _open(http: httpx.Client, path: str, token: str) -> tuple[httpx.Response, Iterator[bytes]]:
    response = http.send(http.build_request("GET", path, headers=bearer(token)), stream=True)
    return response, response.iter_raw()


@BOTH
def test_open_stream_limit_holds_across_workers_and_releases(redis: RedisServer) -> None:
    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_MAX_STREAMS_PER_USER": "2",
        "CHAT_DEMO_DELAY_SCALE": "1",
        "CHAT_CACHE_TTL": "0",
        "CHAT_RESUME_WINDOW": "0",  # the client's going ends the generation, and its slot
    }
    token = make_token(sub="streamer")
    with running_service(env, workers=2) as svc:
        clients = [httpx.Client(base_url=svc.url, timeout=30) for _ in range(4)]
        try:
            first, first_chunks = _open(clients[0], "/chat/one", token)
            second, _ = _open(clients[1], "/chat/two", token)
            assert (first.status_code, second.status_code) == (200, 200)
            read_stream(first, time.monotonic(), limit=1, chunks=first_chunks)

            third = clients[2].get("/chat/three", headers=bearer(token))
            assert third.status_code == 429
            assert int(third.headers["retry-after"]) >= 1
            assert third.json()["detail"] == "too many open streams"

            first.close()  # the client goes away: its slot must come back
            deadline = time.monotonic() + 5
            while True:
                fourth, _ = _open(clients[3], "/chat/four", token)
                if fourth.status_code == 200 or time.monotonic() > deadline:
                    break
                fourth.close()
                time.sleep(0.1)  # the release travels through another process
            assert fourth.status_code == 200
            fourth.close()
            second.close()
        finally:
            for client in clients:
                client.close()


@BOTH
def test_a_sigkilled_worker_cannot_lock_a_user_out(redis: RedisServer) -> None:
    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_MAX_STREAMS_PER_USER": "1",
        "CHAT_STREAM_LEASE_SECONDS": "2",
        "CHAT_DEMO_DELAY_SCALE": "5",
        "CHAT_CACHE_TTL": "0",
        "CHAT_RESUME_WINDOW": "0",  # a closed stream ends at once, not at shutdown
    }
    token = make_token(sub="killed")
    with running_service(env, workers=2) as svc, httpx.Client(base_url=svc.url) as http:
        response, chunks = _open(http, "/chat/hold", token)
        assert response.status_code == 200
        read_stream(response, time.monotonic(), limit=1, chunks=chunks)
        assert _status(svc, "/chat/again", token) == 429

        for pid in svc.worker_pids():  # whichever worker holds it dies without cleanup
            os.kill(pid, signal.SIGKILL)
        response.close()
        killed_at = time.monotonic()
        svc.wait_for_event("Application startup complete", count=4, timeout=30)
        while True:
            again = _status(svc, "/chat/again", token)
            if again == 200 or time.monotonic() - killed_at > 10:
                break
            time.sleep(0.2)  # waiting out a lease in Redis; there is no event to await
        assert again == 200
        assert time.monotonic() - killed_at < 2 + 3  # one lease, plus restart slack


def _status(svc: Service, path: str, token: str) -> int:
    """The status of a stream request, without waiting for the stream to end."""
    with (
        httpx.Client(base_url=svc.url, timeout=30) as http,
        http.stream("GET", path, headers=bearer(token)) as response,
    ):
        return response.status_code


@BOTH
def test_cache_hit_replays_the_same_text_at_once_and_is_shared_across_processes(
    redis: RedisServer,
) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_DEMO_DELAY_SCALE": "0.3"}
    with running_service(env, workers=2) as one, running_service(env, workers=1) as two:
        miss = _fresh_get(one, "/chat/cache-me", headers=bearer())
        hit = _fresh_get(one, "/chat/cache-me", headers=bearer())
        elsewhere = _fresh_get(two, "/chat/cache-me", headers=bearer())
        bypass = _fresh_get(
            two, "/chat/cache-me", headers={**bearer(), "Cache-Control": "no-cache"}
        )

    assert miss.headers["x-cache"] == "MISS"
    assert hit.headers["x-cache"] == "HIT"
    assert elsewhere.headers["x-cache"] == "HIT"
    assert bypass.headers["x-cache"] == "MISS"
    assert hit.text == miss.text == elsewhere.text == bypass.text
    assert hit.names == miss.names
    assert miss.events[-1].at > 1.0  # 0.3 x (2 s thinking + ~2 s of characters)
    assert hit.events[-1].at < 0.2
    assert elsewhere.events[-1].at < 0.2
    assert bypass.events[-1].at > 1.0


@BOTH
def test_a_disconnected_stream_is_not_cached(redis: RedisServer) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_DEMO_DELAY_SCALE": "0.3"}
    with running_service(env, workers=1) as svc:
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            partial = stream_chat(http, "GET", "/chat/leave-early", headers=bearer(), limit=7)
        assert partial.names[-1] == "content"
        svc.wait_for_outcome("disconnected")
        again = _fresh_get(svc, "/chat/leave-early", headers=bearer())
        assert again.headers["x-cache"] == "MISS"
        assert again.names[-1] == "done"


@BOTH
def test_identical_requests_that_miss_together_generate_once(redis: RedisServer) -> None:
    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_DEMO_DELAY_SCALE": "0.3",
        "CHAT_MAX_STREAMS_PER_USER": "10",
    }
    with running_service(env, workers=2) as svc:
        before = _metric(svc, "chat_backend_streams_total", '{backend="demo"}')
        results: list[Stream] = []

        def one() -> None:
            results.append(_fresh_get(svc, "/chat/together", headers=bearer()))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        after = _metric(svc, "chat_backend_streams_total", '{backend="demo"}')

    assert len(results) == 4
    assert {r.names[-1] for r in results} == {"done"}
    assert len({r.text for r in results}) == 1
    assert after - before == 1


def _traffic(
    svc: Service, stop: threading.Event, failures: list[str], count: list[int], user: str
) -> None:
    """Stream until told to stop. Every failure is recorded, exceptions included: a thread
    that died silently would otherwise leave `failures` empty and the test green."""
    # One user per thread: four threads of one user would meet the open-stream cap (3).
    headers = bearer(make_token(sub=user))
    try:
        with httpx.Client(base_url=svc.url, timeout=10) as http:
            n = 0
            while not stop.is_set():
                n += 1
                stream = stream_chat(http, "GET", f"/chat/traffic-{n}", headers=headers)
                if stream.status != 200 or stream.names[-1:] != ["done"]:
                    failures.append(f"{stream.status} {stream.names[-1:]}")
                count[0] += 1
    except Exception as exc:
        failures.append(f"{user}: {type(exc).__name__}: {exc}")


def test_redis_killed_under_traffic_then_restarted(redis: RedisServer) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_RATE_LIMIT": "100000/minute"}
    with running_service(env, workers=2) as svc:
        assert httpx.get(f"{svc.url}/readyz").status_code == 200
        stop, failures, count = threading.Event(), [], [0]
        workers = [
            threading.Thread(target=_traffic, args=(svc, stop, failures, count, f"traffic-{n}"))
            for n in range(4)
        ]
        for worker in workers:
            worker.start()
        try:
            redis.kill()
            down = httpx.get(f"{svc.url}/readyz")
            served_while_down = count[0]
            deadline = time.monotonic() + 20
            while count[0] < served_while_down + 40 and time.monotonic() < deadline:
                time.sleep(0.05)  # let traffic run against the dead Redis
            during = count[0] - served_while_down
            redis.start()
            recovered = _wait_ready(svc)
            served_after = count[0]
            while count[0] < served_after + 20 and time.monotonic() < deadline + 10:
                time.sleep(0.05)  # and some after it is back
            after = count[0] - served_after
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)

    assert not [w for w in workers if w.is_alive()]
    assert during >= 40 and after >= 20, (during, after)
    assert down.status_code == 503
    assert "redis" in down.json()["detail"]
    assert recovered
    assert failures == []
    assert any("redis unavailable" in line for line in svc.lines)
    assert any("redis is back" in line for line in svc.lines)


def _wait_ready(svc: Service, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{svc.url}/readyz").status_code == 200:
            return True
        time.sleep(0.1)  # readiness of another process; polled like a kubelet would
    return False


def test_limits_are_enforced_again_after_redis_returns(redis: RedisServer) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_RATE_LIMIT": "3/minute"}
    with running_service(env, workers=1) as svc:
        redis.kill()
        token = make_token(sub="while-down")
        # Fail open: more than the limit goes through while Redis is away.
        assert all(
            _fresh_get(svc, "/chat/x", headers=bearer(token)).status == 200 for _ in range(5)
        )
        redis.start()
        assert _wait_ready(svc)
        # At once: no pause after Redis returns, in which limits would still be off.
        statuses = [_fresh_get(svc, "/chat/x", headers=bearer(token)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_frozen_redis_does_not_stall_open_streams_or_new_ones(redis: RedisServer) -> None:
    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_DEMO_DELAY_SCALE": "1",
        "CHAT_SSE_PING_SECONDS": "0.2",
        "CHAT_CACHE_TTL": "0",
    }
    with running_service(env, workers=2) as svc:
        results: list[Stream] = []
        errors: list[str] = []
        opened = threading.Barrier(3)

        def one(path: str) -> None:
            try:
                with httpx.Client(base_url=svc.url, timeout=30) as http:
                    started = time.monotonic()
                    with http.stream("GET", path, headers=bearer()) as response:
                        opened.wait(10)
                        results.append(read_stream(response, started))
            except Exception as exc:
                errors.append(f"{path}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=one, args=(f"/chat/frozen-{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        opened.wait(10)
        redis.freeze()
        try:
            frozen_at = time.monotonic()
            during = _fresh_get(svc, "/chat/while-frozen", headers=bearer())
            new_first_event = during.events[0].at
            for thread in threads:
                thread.join(30)
        finally:
            redis.thaw()

    assert errors == []
    assert len(results) == 2  # both open streams were read to their end
    assert during.status == 200 and during.names[-1] == "done"
    # A new stream pays at most the Redis timeout and the probe's before failing open.
    assert new_first_event < 1.0
    for stream in results:
        assert stream.names[-1] == "done"
        times = [e.at for e in stream.events]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Thinking steps are 0.5 s apart, characters 0.03 s: nothing waits on Redis.
        assert max(gaps) < 0.5 + 0.25
        assert stream.comments.count("ping") >= 1
    assert time.monotonic() - frozen_at < 10


def test_conversations_live_in_redis_across_workers_and_keep_the_last_turns(
    redis: RedisServer,
) -> None:
    env = {"CHAT_REDIS_URL": redis.url, "CHAT_HISTORY_TURNS": "2"}
    token = make_token(sub="historian")
    with running_service(env, workers=2) as svc:
        workers = sorted(svc.worker_pids())
        for n in range(3):  # the turns land on both workers in turn
            with svc.served_by(workers[n % 2]), httpx.Client(base_url=svc.url, timeout=30) as http:
                stream = stream_chat(
                    http,
                    "POST",
                    "/chat",
                    json={"message": f"turn {n}", "conversation_id": "c-1"},
                    headers=bearer(token),
                )
                assert stream.names[-1] == "done"
        with httpx.Client(base_url=svc.url) as http:
            history = http.get("/conversations/c-1", headers=bearer(token)).json()
            intruder = http.get("/conversations/c-1", headers=bearer(make_token(sub="x")))
        redis.kill()
        with httpx.Client(base_url=svc.url) as http:
            down = http.get("/conversations/c-1", headers=bearer(token))

    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == [
        "turn 1",
        "turn 2",
    ]
    assert history["messages"][1]["content"].startswith("You said: turn 1.")
    assert intruder.status_code == 404
    assert down.status_code == 503


@BOTH
def test_many_concurrent_streams_do_not_exhaust_the_redis_pool(redis: RedisServer) -> None:
    """Regression: redis-py's default pool refused its 101st connection, which the service
    read as Redis being down, switching limits off under load."""
    import asyncio

    env = {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_RATE_LIMIT": "1000000/minute",
        "CHAT_MAX_STREAMS_PER_USER": "100000",
        "CHAT_DEMO_DELAY_SCALE": "0.2",
    }

    async def load(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

            async def one(n: int) -> int:
                headers = bearer(make_token(sub=f"crowd-{n % 20}"))
                async with http.stream("GET", f"/chat/crowd-{n}", headers=headers) as response:
                    async for _ in response.aiter_raw():
                        pass
                    return response.status_code

            return await asyncio.gather(*(one(n) for n in range(150)))

    with running_service(env, workers=1) as svc:
        statuses = asyncio.run(load(svc.url))
        errors = _metric(svc, "chat_redis_errors_total", '{op="rate_limit"}')

    assert statuses == [200] * 150
    assert not [line for line in svc.lines if "redis unavailable" in line]
    assert errors == 0
