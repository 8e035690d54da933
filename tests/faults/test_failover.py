"""A failover under traffic, in the two topologies that have one: a primary and a replica
watched by three Sentinels, and a Cluster of three primaries with a replica each. Two `serve`
instances stream chats while a primary is SIGKILLed. Chats keep streaming (limits fail open
for the few seconds nothing serves its data), and once the replica is promoted the rate
limit, the open-stream cap, the token budget, history and resume hold across both
instances again, with no restart. In the Cluster, the users checked afterwards are ones
whose keys the killed primary held."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from service.redis.keys import user as user_prefix
from tests.support.redis import RedisServer
from tests.support.redis_topologies import (
    RedisCluster,
    SentinelGroup,
    running_cluster,
    running_sentinel_group,
)
from tests.support.service import Service, running_service
from tests.support.sse import Stream, read_stream, stream_chat
from tests.support.tokens import bearer, make_token


class Failover:
    """What the test needs of a topology: its URL, the primary to kill, whether a replica
    has taken over, users whose keys the promoted replica holds, and where a key lives."""

    def __init__(self, topology: SentinelGroup | RedisCluster) -> None:
        self.topology = topology
        self.url = topology.url
        self.victim = self._primary(user_prefix("victim"))
        self._subs = itertools.count()

    def _primary(self, key: str) -> RedisServer:
        if isinstance(self.topology, RedisCluster):
            return self.topology.serving(key)
        port = self.topology.primary_port()
        servers = [self.topology.primary, self.topology.replica]
        return next(s for s in servers if s is not None and s.port == port)

    def kill(self) -> None:
        assert self.victim.proc is not None
        os.kill(self.victim.proc.pid, signal.SIGKILL)

    def promoted(self) -> bool:
        return self._primary(user_prefix("victim")) is not self.victim

    def user(self, prefix: str) -> str:
        """A new user's `sub` whose keys live where the victim's did (any, with Sentinel)."""
        holder = self._primary(user_prefix("victim"))
        while True:
            sub = f"{prefix}-{uuid.uuid4().hex[:8]}-{next(self._subs)}"
            if self._primary(user_prefix(sub)) is holder:
                return sub

    def keys_in(self, key: str) -> int:
        """How many keys the server holding `key` has."""
        client = redis.Redis(port=self._primary(key).port)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def exists(self, key: str) -> bool:
        client = redis.Redis(port=self._primary(key).port)
        try:
            return bool(client.exists(key))
        finally:
            client.close()


@pytest.fixture(params=["sentinel", "cluster"])
def failover(request: pytest.FixtureRequest) -> Iterator[Failover]:
    if request.param == "sentinel":
        with running_sentinel_group() as group:
            yield Failover(group)
    else:
        with running_cluster(replicas=1) as cluster:
            yield Failover(cluster)


def _env(failover: Failover) -> dict[str, str]:
    return {
        "CHAT_REDIS_URL": failover.url,
        "CHAT_DEMO_DELAY_SCALE": "0.05",  # a reply takes about 0.2 s
        "CHAT_CACHE_TTL": "0",
        "CHAT_RATE_LIMIT": "5/minute",
        "CHAT_MAX_STREAMS_PER_USER": "2",
        "CHAT_TOKEN_BUDGET": "3000/hour",
        "CHAT_MAX_OUTPUT_TOKENS": "100",
    }


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
    failover: Failover,
) -> None:
    env = _env(failover)
    with running_service(env, workers=1) as a, running_service(env, workers=1) as b:
        pods = (a, b)
        assert _chat(a, make_token(sub=failover.user("warm-a")), "hello") == 200
        assert _chat(b, make_token(sub=failover.user("warm-b")), "hello") == 200
        # The state is in the primary to be killed (not in some other Redis).
        assert failover.keys_in(user_prefix("victim")) > 0

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
        before_kill = len(statuses)
        killed_at = time.monotonic()
        failover.kill()
        deadline = killed_at + 30
        while not failover.promoted():
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
        token = make_token(sub=failover.user("rate"))
        rates = [_chat(pods[n % 2], token, f"counted {n}") for n in range(6)]
        assert rates == [200] * 5 + [429]

        # The open-stream cap: two slow streams held, one on each; a third is refused.
        token = make_token(sub=failover.user("cap"))
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
        token = make_token(sub=failover.user("budget"))
        spent = [_send(a, token, f"{n} " + "x" * 2990) for n in range(2)]
        assert [s.status for s in spent] == [200, 429]
        assert "token budget" in spent[-1].raw.decode()
        refused = _send(b, token, "and here too " + "x" * 2990)
        assert refused.status == 429 and "token budget" in refused.raw.decode()

        # History written through one instance, read through the other.
        token = make_token(sub=failover.user("history"))
        kept = _send(a, token, "remember this", conversation_id="after-failover")
        assert kept.status == 200, kept.raw
        assert failover.exists("chat:conv-owner:after-failover")
        history = httpx.get(f"{b.url}/conversations/after-failover", headers=bearer(token))
        assert history.status_code == 200
        assert history.json()["messages"][0]["content"] == "remember this"

        # Resume: dropped on one instance, the rest from the other.
        token = make_token(sub=failover.user("resume"))
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
