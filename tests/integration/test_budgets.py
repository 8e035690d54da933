"""Token budgets end to end: two real `serve` instances on one real Redis, in front of a
real OpenAI-compatible server that meters what each request consumed.

The upstream counts a prompt its own way (a token a word, tests/support/fake_openai.py);
the service only estimates it. Whatever the service believes, the truth checked here is
what the upstream says it served.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, running_fake_openai
from tests.support.metrics import metric
from tests.support.redis import RedisServer
from tests.support.redis_topologies import RedisCluster, redis_of_kind
from tests.support.service import Service, running_service
from tests.support.sse import read_stream, stream_chat
from tests.support.tokens import bearer, make_token

BUDGET = 1000
MAX_OUTPUT = 50
# A message of 13 words: the upstream counts 3 + 4 + 13 = 20 prompt tokens.
BURST = "budget 80 0.02 a a a a a a a a a a"
BURST_PROMPT = 20


def env(upstream: FakeOpenAI, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "CHAT_BACKEND": "openai",
        "CHAT_OPENAI_BASE_URL": upstream.base_url,
        "CHAT_OPENAI_MODEL": "metered-model",
        "CHAT_REDIS_URL": redis_url,
        "CHAT_TOKEN_BUDGET": f"{BUDGET}/hour",
        "CHAT_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT),
        "CHAT_RATE_LIMIT": "100000/minute",
        "CHAT_MAX_STREAMS_PER_USER": "100",
        "CHAT_CACHE_TTL": "0",
        "CHAT_RESUME_WINDOW": "0",  # a client that leaves cancels its generation
        **extra,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as fake:
        yield fake


@pytest.fixture(scope="module", params=["redis", "cluster"])
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer | RedisCluster]:
    """A redis-server of the module's own, then the session's Cluster of three."""
    with redis_of_kind(request, request.param) as made:
        assert made is not None
        yield made


@pytest.fixture(scope="module")
def pods(
    upstream: FakeOpenAI, redis_server: RedisServer | RedisCluster
) -> Iterator[tuple[Service, Service]]:
    with (
        running_service(env(upstream, redis_server.url), workers=2) as a,
        running_service(env(upstream, redis_server.url), workers=1) as b,
    ):
        yield a, b


def user() -> tuple[str, str]:
    sub = f"budget-{uuid.uuid4().hex[:8]}"
    return sub, make_token(sub=sub)


def usage(service: Service, token: str) -> dict[str, Any]:
    response = httpx.get(f"{service.url}/usage", headers=bearer(token), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def wait_for_used(service: Service, token: str, used: int, timeout: float = 15.0) -> None:
    """Until the settled count is `used` (settling runs as the generation ends, after the
    client may already have its last event)."""
    deadline = time.monotonic() + timeout
    seen = usage(service, token)
    while seen["used"] != used or seen["reserved"]:
        assert time.monotonic() < deadline, f"used {seen}, expected {used}"
        time.sleep(0.05)
        seen = usage(service, token)


def post(service: Service, token: str, message: str, **kwargs: Any) -> Any:
    with httpx.Client(base_url=service.url, timeout=60) as http:
        return stream_chat(
            http, "POST", "/chat", json={"message": message}, headers=bearer(token), **kwargs
        )


def burst(
    pods: tuple[Service, Service], token: str, count: int
) -> tuple[list[Any], list[BaseException]]:
    """`count` streams of one user at once, alternating between the two instances."""
    results: list[Any] = []
    failures: list[BaseException] = []
    go = threading.Barrier(count)

    def one(service: Service) -> None:
        try:
            go.wait(10)
            results.append(post(service, token, BURST))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(pods[i % 2],)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, failures


def sent_upstream(upstream: FakeOpenAI, message: str) -> list[dict[str, Any]]:
    return [r.body for r in upstream.requests if r.body["messages"][-1]["content"] == message]


@contextmanager
def streaming(
    service: Service, token: str, message: str, first: int
) -> Iterator[tuple[httpx.Response, Iterator[bytes], Any]]:
    """A stream held open after its `first` events: the response, its chunks (read the
    rest from them) and what was read so far."""
    with (
        httpx.Client(base_url=service.url, timeout=30) as http,
        http.stream("POST", "/chat", json={"message": message}, headers=bearer(token)) as response,
    ):
        chunks = response.iter_raw()
        yield response, chunks, read_stream(response, time.monotonic(), limit=first, chunks=chunks)


def test_concurrent_streams_never_overspend_the_budget(
    pods: tuple[Service, Service], upstream: FakeOpenAI
) -> None:
    """20 concurrent streams of one user, split over both instances, against a budget of
    1000 tokens; each upstream reply would take 80 tokens if it could. Three rounds."""
    a, b = pods
    limited_before = metric(a.url, "chat_rate_limited_total", '{limit="tokens"}')
    for _round in range(3):
        _sub, token = user()
        consumed_before = len(upstream.consumed)
        results, failures = burst(pods, token, 20)
        assert failures == []
        assert len(results) == 20
        served = [r for r in results if r.status == 200]
        refused = [r for r in results if r.status == 429]
        assert len(served) + len(refused) == 20
        assert served and refused, [r.status for r in results]
        for stream in refused:
            assert int(stream.headers["retry-after"]) >= 1
            assert "token budget" in stream.raw.decode()
            assert '"tokens";q=1000;w=3600' in stream.headers["ratelimit-policy"]
        # The upstream heard only the admitted ones, and each stopped at the output limit.
        consumed = upstream.consumed[consumed_before:]
        assert len(consumed) == len(served)
        assert consumed == [BURST_PROMPT + MAX_OUTPUT] * len(served)
        for stream in served:
            done = stream.events[-1]
            assert done.name == "done" and done.data["reason"] == "length"
            assert done.data["usage"] == {
                "prompt_tokens": BURST_PROMPT,
                "completion_tokens": MAX_OUTPUT,
                "total_tokens": BURST_PROMPT + MAX_OUTPUT,
            }
        # Never more than the budget plus one reply's estimate error (a prompt estimate that
        # is off by a few tokens), and the budget was really used, not refused early.
        assert sum(consumed) <= BUDGET + 10
        assert sum(consumed) > BUDGET - 2 * (BURST_PROMPT + MAX_OUTPUT)
        # Settled: the count is what the upstream reported, on both instances.
        wait_for_used(a, token, sum(consumed))
        assert usage(b, token)["used"] == sum(consumed)
    assert metric(a.url, "chat_rate_limited_total", '{limit="tokens"}') > limited_before


def test_two_instances_share_one_budget(pods: tuple[Service, Service]) -> None:
    a, b = pods
    _sub, token = user()
    first = post(a, token, "budget 30")
    assert first.status == 200
    total = first.events[-1].data["usage"]["total_tokens"]
    assert total == 3 + 4 + 2 + 30
    wait_for_used(b, token, total)
    standing = usage(b, token)
    assert standing["limit"] == BUDGET
    assert standing["remaining"] == BUDGET - total
    assert 3590 <= standing["reset_seconds"] <= 3600
    # Spend the rest on B, one reply at a time, until B refuses; then A refuses too.
    statuses = []
    for _ in range(30):
        stream = post(b, token, "budget 50")
        statuses.append(stream.status)
        if stream.status == 429:
            break
    assert statuses[-1] == 429 and statuses.count(200) >= 10
    refused = post(a, token, "budget 1")
    assert refused.status == 429
    assert "token budget" in refused.raw.decode()
    # Nothing is open that could give tokens back: the next chance is the window's end.
    assert 3590 <= int(refused.headers["retry-after"]) <= 3600


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, text
    return int(match.group(1))


def test_a_conversation_reserves_its_history_too(pods: tuple[Service, Service]) -> None:
    a, _ = pods
    _sub, token = user()
    body = {"message": "budget 50", "conversation_id": f"c-{uuid.uuid4().hex[:8]}"}
    with httpx.Client(base_url=a.url, timeout=60) as http:
        for _ in range(20):
            stream = stream_chat(http, "POST", "/chat", json=body, headers=bearer(token))
            if stream.status != 200:
                break
    assert stream.status == 429
    detail = stream.raw.decode()
    needed = number(r"needs up to (\d+)", detail)
    # The message and the output limit, and the earlier turns on top: more than a new one.
    assert needed > 2 * (9 + MAX_OUTPUT)
    left = number(r"reached: (\d+) of 1000", detail)
    assert left == usage(a, token)["remaining"]
    assert 3590 <= int(stream.headers["retry-after"]) <= 3600


def test_headers_usage_on_done_and_metrics(pods: tuple[Service, Service]) -> None:
    a, _ = pods
    _sub, token = user()
    prompt_before = metric(a.url, "chat_tokens_total", '{kind="prompt"}')
    completion_before = metric(a.url, "chat_tokens_total", '{kind="completion"}')
    stream = post(a, token, "budget 5")
    assert stream.status == 200
    assert stream.headers["ratelimit-policy"] == (
        '"requests";q=100000;w=60, "tokens";q=1000;w=3600'
    )
    # What the admission saw: the reservation (prompt estimate + the output limit) held.
    requests_part, tokens_part = stream.headers["ratelimit"].split(", ")
    assert requests_part.startswith('"requests";r=99999;t=')
    name, remaining, reset = tokens_part.split(";")
    assert name == '"tokens"'
    assert BUDGET - MAX_OUTPUT - 20 < int(remaining.removeprefix("r=")) < BUDGET - MAX_OUTPUT
    assert 3590 <= int(reset.removeprefix("t=")) <= 3600
    assert stream.events[-1].data["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 5,
        "total_tokens": 14,
    }
    assert metric(a.url, "chat_tokens_total", '{kind="prompt"}') - prompt_before == 9
    assert metric(a.url, "chat_tokens_total", '{kind="completion"}') - completion_before == 5
    stream_id = stream.headers["x-stream-id"]
    a.wait_for_records(lambda r: r.get("stream") == stream_id, 2)
    records = [r for r in a.records() if r.get("stream") == stream_id]
    access = next(r for r in records if r["event"] == "stream finished")
    assert access["prompt_tokens"] == 9 and access["completion_tokens"] == 5
    ended = next(r for r in records if r["event"] == "generation finished")
    assert ended["usage"] == "upstream"
    assert ended["prompt_tokens"] == 9 and ended["completion_tokens"] == 5


def test_an_upstream_without_usage_is_estimated_and_logged_so(
    pods: tuple[Service, Service],
) -> None:
    a, _ = pods
    _sub, token = user()
    stream = post(a, token, "nousage 6")
    assert stream.status == 200
    assert stream.text == "w0 w1 w2 w3 w4 w5 "
    usage_data = stream.events[-1].data["usage"]
    # The estimate: 18 ASCII characters a side, a token per three, plus the framing.
    assert usage_data == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    wait_for_used(a, token, 16)
    stream_id = stream.headers["x-stream-id"]
    a.wait_for_records(lambda r: r.get("stream") == stream_id and "usage" in r, 1)
    ended = [r for r in a.records() if r.get("stream") == stream_id and "usage" in r]
    assert ended[0]["event"] == "generation finished" and ended[0]["usage"] == "estimate"


def test_the_output_limit_goes_upstream_under_both_names(
    pods: tuple[Service, Service], upstream: FakeOpenAI
) -> None:
    a, _ = pods
    _sub, token = user()
    assert post(a, token, "budget 2").status == 200
    body = sent_upstream(upstream, "budget 2")[-1]
    assert body["max_completion_tokens"] == MAX_OUTPUT
    assert body["max_tokens"] == MAX_OUTPUT
    # A server that refuses the older name gets the request once more without it.
    stream = post(a, token, "no-max-tokens please")
    assert stream.status == 200 and stream.events[-1].name == "done"
    bodies = sent_upstream(upstream, "no-max-tokens please")
    assert [("max_tokens" in b, b["max_completion_tokens"]) for b in bodies[-2:]] == [
        (True, MAX_OUTPUT),
        (False, MAX_OUTPUT),
    ]


def test_a_stream_stopped_by_delete_is_settled_to_what_it_produced(
    pods: tuple[Service, Service],
) -> None:
    a, b = pods
    _sub, token = user()
    with streaming(a, token, "nousage 40 0.1", 4) as (response, chunks, started):
        assert usage(a, token)["reserved"] > MAX_OUTPUT  # held while it streams
        stream_id = response.headers["x-stream-id"]
        stopped = httpx.delete(f"{b.url}/chat/streams/{stream_id}", headers=bearer(token))
        assert stopped.status_code == 204
        rest = read_stream(response, time.monotonic(), chunks=chunks)
    done = rest.events[-1]
    assert done.name == "done" and done.data["reason"] == "cancelled"
    produced = started.text + rest.text
    assert 0 < len(produced) < len("w0 " * 40)
    spent = done.data["usage"]
    assert spent["completion_tokens"] < MAX_OUTPUT
    wait_for_used(a, token, spent["total_tokens"])


def test_a_stream_whose_client_left_is_settled_to_what_it_produced(
    pods: tuple[Service, Service],
) -> None:
    a, _ = pods
    _sub, token = user()
    with streaming(a, token, "nousage 40 0.1", 5) as (response, _, _):
        stream_id = response.headers["x-stream-id"]

    def finished(r: dict[str, Any]) -> bool:
        return r.get("event") == "generation finished" and r.get("stream") == stream_id

    a.wait_for_records(finished, 1)
    ended = next(r for r in a.records() if finished(r))
    assert ended["outcome"] == "disconnected"
    assert ended["usage"] == "estimate"
    assert 0 < ended["completion_tokens"] < 40
    wait_for_used(a, token, ended["prompt_tokens"] + ended["completion_tokens"])


def test_a_stream_ended_by_shutdown_is_settled_to_what_it_produced(
    upstream: FakeOpenAI, redis_server: RedisServer | RedisCluster, pods: tuple[Service, Service]
) -> None:
    a, _ = pods
    _sub, token = user()
    with running_service(
        env(upstream, redis_server.url, CHAT_GRACEFUL_TIMEOUT="1"), workers=1
    ) as leaving:
        with streaming(leaving, token, "nousage 200 0.05", 5) as (response, chunks, _):
            leaving.proc.terminate()
            rest = read_stream(response, time.monotonic(), chunks=chunks)
        assert rest.events[-1].name == "error"
        assert rest.events[-1].data["code"] == "shutdown"
        leaving.proc.wait(30)
        ended = next(r for r in leaving.records() if r.get("event") == "generation finished")
    assert ended["outcome"] == "shutdown"
    assert 0 < ended["completion_tokens"] < 200
    wait_for_used(a, token, ended["prompt_tokens"] + ended["completion_tokens"])


def test_a_settlement_that_cannot_reach_redis_is_retried(
    pods: tuple[Service, Service], redis_server: RedisServer | RedisCluster
) -> None:
    a, _ = pods
    _sub, token = user()
    with streaming(a, token, "budget 20 0.1", 3) as (response, chunks, _):
        redis_server.freeze()
        try:
            rest = read_stream(response, time.monotonic(), chunks=chunks)
            assert rest.events[-1].name == "done"
            # The reply ended while Redis was away: its settlement is still to land.
            a.wait_for_event("redis unavailable")
        finally:
            redis_server.thaw()
    wait_for_used(a, token, rest.events[-1].data["usage"]["total_tokens"], timeout=20)


def test_without_redis_the_worker_keeps_the_budget_and_usage_is_null_when_off() -> None:
    with running_service(
        {"CHAT_TOKEN_BUDGET": "300/minute", "CHAT_MAX_OUTPUT_TOKENS": "100"}, workers=1
    ) as svc:
        _sub, token = user()
        totals = []
        statuses = []
        for n in range(6):
            stream = post(svc, token, f"hi {n}")
            statuses.append(stream.status)
            if stream.status != 200:
                break
            usage_data = stream.events[-1].data["usage"]
            # The demo has no tokenizer: its reply and thinking steps, estimated.
            assert usage_data["completion_tokens"] > 20
            totals.append(usage_data["total_tokens"])
            wait_for_used(svc, token, sum(totals))
        assert statuses[-1] == 429 and len(totals) >= 2
        assert sum(totals) <= 300
        # A cached reply cost no tokens: it is counted as none, and fits even now.
        hit = post(svc, token, "hi 0")
        assert hit.status == 200 and hit.headers["x-cache"] == "HIT"
        assert hit.events[-1].data["usage"]["total_tokens"] == 0
        wait_for_used(svc, token, sum(totals))
        standing = usage(svc, token)
        assert standing["remaining"] == 300 - sum(totals)
        assert 0 < standing["reset_seconds"] <= 60
    with running_service({}, workers=1) as off:
        _sub, token = user()
        assert usage(off, token) == {
            "limit": None,
            "used": None,
            "remaining": None,
            "reset_seconds": None,
        }
        stream = post(off, token, "hi")
        assert "tokens" not in stream.headers["ratelimit-policy"]
        assert stream.events[-1].data["usage"]["total_tokens"] > 0
