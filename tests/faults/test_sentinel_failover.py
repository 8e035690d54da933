"""A Sentinel failover under traffic: a primary, a replica and three Sentinels; two `serve`
instances stream chats while the primary is SIGKILLed. Chats keep streaming (limits fail
open for the few seconds nothing is primary), and once the replica is promoted the rate
limit, the open-stream cap, the token budget, history and resume hold across both
instances again, with no restart."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.support.redis_topologies import SentinelGroup, running_sentinel_group
from tests.support.service import Service, running_service
from tests.support.sse import Stream, read_stream, stream_chat
from tests.support.tokens import bearer, make_token


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with running_sentinel_group() as made:
        yield made


def _env(group: SentinelGroup) -> dict[str, str]:
    return {
        "CHAT_REDIS_URL": group.url,
        "CHAT_DEMO_DELAY_SCALE": "0.05",  # a reply takes about 0.2 s
        "CHAT_CACHE_TTL": "0",
        "CHAT_RATE_LIMIT": "5/minute",
        "CHAT_MAX_STREAMS_PER_USER": "2",
        "CHAT_TOKEN_BUDGET": "3000/hour",
        "CHAT_MAX_OUTPUT_TOKENS": "100",
    }


def _keys_in_primary(group: SentinelGroup) -> int:
    primary = redis.Redis(port=group.primary_port())
    try:
        return int(primary.dbsize())
    finally:
        primary.close()


def _chat(svc: Service, token: str, message: str, **body: str) -> int:
    return _send(svc, token, message, **body).status


def _send(svc: Service, token: str, message: str, **body: str) -> Stream:
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        stream = stream_chat(
            http, "POST", "/chat", json={"message": message, **body}, headers=bearer(token)
        )
    if stream.status == 200:
        assert stream.names[-1] == "done", stream.names
    return stream


def test_a_killed_primary_fails_open_briefly_then_everything_holds_again(
    group: SentinelGroup,
) -> None:
    with running_service(_env(group), workers=1) as a, running_service(_env(group), workers=1) as b:
        pods = (a, b)
        assert _chat(a, make_token(sub="warm-a"), "hello") == 200
        assert _chat(b, make_token(sub="warm-b"), "hello") == 200
        # The state is in the primary the Sentinels name (not in some other Redis).
        assert _keys_in_primary(group) > 0

        # Traffic on both instances, each chat a user of its own (no limit in its way).
        stop = threading.Event()
        statuses: list[int] = []
        failures: list[BaseException] = []

        def traffic(svc: Service) -> None:
            while not stop.is_set():
                try:
                    statuses.append(_chat(svc, make_token(sub=f"t-{uuid.uuid4().hex}"), "busy"))
                except BaseException as exc:
                    failures.append(exc)
                    return

        threads = [threading.Thread(target=traffic, args=(svc,)) for svc in pods for _ in range(2)]
        for thread in threads:
            thread.start()
        old_primary = group.primary_port()
        before_kill = len(statuses)
        killed_at = time.monotonic()
        assert group.primary.proc is not None
        os.kill(group.primary.proc.pid, signal.SIGKILL)
        deadline = killed_at + 30
        while group.primary_port() == old_primary:
            assert time.monotonic() < deadline, "no promotion"
            time.sleep(0.1)
        promoted_at = time.monotonic()
        while not all(httpx.get(f"{svc.url}/readyz").status_code == 200 for svc in pods):
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.05)
        ready_at = time.monotonic()
        time.sleep(1.0)  # traffic after the recovery, too
        stop.set()
        for thread in threads:
            thread.join(30)
        assert failures == []
        assert len(statuses) > before_kill + 8  # chats went on through it all
        assert set(statuses) == {200}
        print(
            f"promotion {promoted_at - killed_at:.1f} s after the kill; "
            f"both ready {ready_at - killed_at:.1f} s after it"
        )

        # The rate limit: one count across both instances.
        token = make_token(sub=f"rate-{uuid.uuid4().hex}")
        rates = [_chat(pods[n % 2], token, f"counted {n}") for n in range(6)]
        assert rates == [200] * 5 + [429]

        # The open-stream cap: two slow streams held, one on each; a third is refused.
        token = make_token(sub=f"cap-{uuid.uuid4().hex}")
        held = []
        try:
            for svc in pods:
                http = httpx.Client(base_url=svc.url, timeout=30)
                response = http.send(
                    http.build_request("GET", "/chat/slow", headers=bearer(token)), stream=True
                )
                held.append((http, response))
                assert response.status_code == 200
            assert _chat(a, token, "one too many") == 429
        finally:
            for http, response in held:
                response.close()
                http.close()

        # The token budget: a long prompt (about 1000 tokens, and the demo echoes it back)
        # spends most of it on one instance; the next is refused there and on the other.
        token = make_token(sub=f"budget-{uuid.uuid4().hex}")
        spent = [_send(a, token, f"{n} " + "x" * 2990) for n in range(2)]
        assert [s.status for s in spent] == [200, 429]
        assert "token budget" in spent[-1].raw.decode()
        refused = _send(b, token, "and here too " + "x" * 2990)
        assert refused.status == 429 and "token budget" in refused.raw.decode()

        # History written through one instance, read through the other.
        token = make_token(sub=f"history-{uuid.uuid4().hex}")
        kept = _send(a, token, "remember this", conversation_id="after-failover")
        assert kept.status == 200, kept.raw
        promoted = redis.Redis(port=group.primary_port())
        try:
            assert promoted.exists("chat:conv-owner:after-failover")
        finally:
            promoted.close()
        history = httpx.get(f"{b.url}/conversations/after-failover", headers=bearer(token))
        assert history.status_code == 200
        assert history.json()["messages"][0]["content"] == "remember this"

        # Resume: dropped on one instance, the rest from the other.
        token = make_token(sub=f"resume-{uuid.uuid4().hex}")
        with httpx.Client(base_url=a.url, timeout=30) as http:
            response = http.send(
                http.build_request("GET", "/chat/come back", headers=bearer(token)), stream=True
            )
            first = read_stream(response, time.monotonic(), limit=3, chunks=response.iter_raw())
            response.close()
        headers = {**bearer(token), "Last-Event-ID": first.events[-1].id or ""}
        stream_id = response.headers["x-stream-id"]
        with httpx.Client(base_url=b.url, timeout=30) as http:
            rest = stream_chat(http, "GET", f"/chat/streams/{stream_id}", headers=headers)
        assert rest.status == 200 and rest.names[-1] == "done"
        assert rest.events[0].id == f"{stream_id}:4"
