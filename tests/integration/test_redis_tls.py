"""Redis over TLS (`rediss://`, CHAT_REDIS_CA_FILE): a redis-server that speaks only TLS,
with a certificate from a CA this test makes, and a second CA that signed nothing it shows."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.support.redis_topologies import TlsRedis, running_tls_redis
from tests.support.service import running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer, make_token


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsRedis]:
    with running_tls_redis() as server:
        yield server


def test_limits_and_history_live_in_redis_over_tls(tls: TlsRedis) -> None:
    env = {
        "CHAT_REDIS_URL": tls.url,
        "CHAT_REDIS_CA_FILE": tls.ca_file,
        "CHAT_RATE_LIMIT": "3/minute",
    }
    with running_service(env, workers=2) as svc:
        pids = sorted(svc.worker_pids())
        token = make_token(sub="tls-user")
        assert httpx.get(f"{svc.url}/readyz").status_code == 200
        statuses = []
        for n in range(4):  # alternating workers: one count, kept in Redis
            with svc.client_of(pids[n % 2]) as http:
                body = {"message": f"over tls {n}", "conversation_id": "tls-conv"}
                stream = stream_chat(http, "POST", "/chat", json=body, headers=bearer(token))
                statuses.append(stream.status)
        assert statuses == [200, 200, 200, 429]
        with svc.client_of(pids[1]) as http:
            history = http.get("/conversations/tls-conv", headers=bearer(token)).json()
        assert [m["content"] for m in history["messages"] if m["role"] == "user"] == [
            "over tls 0",
            "over tls 1",
            "over tls 2",
        ]
        records = svc.records()
    direct = redis.Redis.from_url(tls.url, ssl_ca_certs=tls.ca_file)
    try:  # the state is in this server (over TLS), not in some other Redis
        assert direct.exists("chat:conv-owner:tls-conv")
    finally:
        direct.close()
    assert not [r for r in records if "redis" in r.get("event", "") and r["level"] != "info"]


def test_a_server_whose_certificate_the_ca_did_not_sign_is_refused(tls: TlsRedis) -> None:
    env = {"CHAT_REDIS_URL": tls.url, "CHAT_REDIS_CA_FILE": tls.other_ca_file}
    with running_service(env, workers=1) as svc:
        ready = httpx.get(f"{svc.url}/readyz")
        assert ready.status_code == 503
        assert "redis" in ready.text.lower()
        # Chat goes on without it (limits fail open), and says so once in the log.
        stream = stream_chat(
            httpx.Client(base_url=svc.url, timeout=30),
            "GET",
            "/chat/hello",
            headers=bearer(make_token(sub="tls-refused")),
        )
        assert stream.status == 200 and stream.names[-1] == "done"
        svc.wait_for_event("redis unavailable; failing open")
        output = "\n".join(svc.lines)
    assert "Traceback" not in output
