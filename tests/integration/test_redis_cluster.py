"""A Redis Cluster of three primaries behind two `serve` instances: a user's limits are one
count across both, and a slot moved to another node while the service runs costs nothing:
no `MOVED` (and no `CROSSSLOT`) ever reaches a request or the error count."""

from __future__ import annotations

import threading
import uuid

import httpx
import redis
from redis.crc import key_slot

from service.redis.keys import user as user_prefix
from tests.support.metrics import total
from tests.support.redis_topologies import RedisCluster
from tests.support.service import Service, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer, make_token


def _env(cluster: RedisCluster) -> dict[str, str]:
    return {
        "CHAT_REDIS_URL": cluster.url,
        "CHAT_DEMO_DELAY_SCALE": "0",
        "CHAT_RATE_LIMIT": "4/minute",
        "CHAT_MAX_STREAMS_PER_USER": "2",
        "CHAT_TOKEN_BUDGET": "100000/hour",
        "CHAT_MAX_OUTPUT_TOKENS": "100",
    }


def _post(svc: Service, token: str, message: str, **body: str) -> int:
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        stream = stream_chat(
            http, "POST", "/chat", json={"message": message, **body}, headers=bearer(token)
        )
    if stream.status == 200:
        assert stream.names[-1] == "done"
    return stream.status


def _move_slot(cluster: RedisCluster, slot: int) -> None:
    """Move one slot, keys and all, to another primary, as `redis-cli --cluster reshard`
    does: the service's slot map is stale from here on."""
    clients = [redis.Redis(port=node.port) for node in cluster.nodes]
    try:
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
        ports = [node.port for node in cluster.nodes]
        [owner_port] = [
            int(row[2][1])
            for row in clients[0].execute_command("CLUSTER", "SLOTS")
            if int(row[0]) <= slot <= int(row[1])
        ]
        source = ports.index(owner_port)
        target = (source + 1) % len(clients)
        src, dst = clients[source], clients[target]
        assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", ports[target], "", 0, 5000, "KEYS", *keys)
        for client in clients:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients:
            client.close()


def test_limits_hold_across_instances_and_a_moved_slot_is_followed(cluster: RedisCluster) -> None:
    cluster.flush()
    with (
        running_service(_env(cluster), workers=2) as a,
        running_service(_env(cluster), workers=1) as b,
    ):
        sub = f"cluster-{uuid.uuid4().hex[:8]}"
        token = make_token(sub=sub)
        assert _post(a, token, "one", conversation_id="kept") == 200
        assert _post(b, token, "two", conversation_id="kept") == 200
        _move_slot(cluster, key_slot(user_prefix(sub).encode()))
        # Every key of hers now lives on another node: the rate count, the leases, the
        # budget and the conversation all follow.
        assert _post(a, token, "three", conversation_id="kept") == 200
        assert _post(b, token, "four", conversation_id="kept") == 200
        assert _post(a, token, "five") == 429
        history = httpx.get(f"{b.url}/conversations/kept", headers=bearer(token)).json()
        assert [m["content"] for m in history["messages"] if m["role"] == "user"] == [
            "one",
            "two",
            "three",
            "four",
        ]
        usage = httpx.get(f"{a.url}/usage", headers=bearer(token)).json()
        assert usage["used"] > 0 and usage["reserved"] == 0

        # The open-stream cap, one count across both instances.
        capped = make_token(sub=f"cap-{uuid.uuid4().hex[:8]}")
        slow = {**_env(cluster), "CHAT_DEMO_DELAY_SCALE": "1"}
        with running_service(slow, workers=1) as c:
            held = []
            try:
                for svc in (c, c):
                    http = httpx.Client(base_url=svc.url, timeout=30)
                    request = http.build_request("GET", "/chat/slow", headers=bearer(capped))
                    held.append((http, http.send(request, stream=True)))
                assert [r.status_code for _, r in held] == [200, 200]
                assert _post(a, capped, "third") == 429
            finally:
                for http, response in held:
                    response.close()
                    http.close()

        # Concurrent traffic from both instances, then not one Redis error anywhere.
        failures: list[BaseException] = []
        statuses: list[int] = []

        def traffic(svc: Service) -> None:
            try:
                for _ in range(10):
                    statuses.append(_post(svc, make_token(sub=uuid.uuid4().hex), "busy"))
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=traffic, args=(svc,)) for svc in (a, b, a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == [] and statuses == [200] * 40
        for svc in (a, b):
            assert total(svc.url, "chat_redis_errors_total") == 0
            output = "\n".join(svc.lines)
            assert "MOVED" not in output and "CROSSSLOT" not in output
