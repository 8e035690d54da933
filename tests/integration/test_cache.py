"""The response cache's lifetime, in worker memory and in a real Redis: a reply is replayed
for CHAT_CACHE_TTL seconds and no longer, and CHAT_CACHE_TTL=0 stores nothing."""

from __future__ import annotations

import time

import httpx

from tests.support.metrics import metric
from tests.support.redis import RedisServer
from tests.support.service import Service, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer, make_token

TTL = 1


def _env(store: RedisServer | None, ttl: int) -> dict[str, str]:
    env = {"CHAT_CACHE_TTL": str(ttl)}
    if store is not None:
        env["CHAT_REDIS_URL"] = store.url
    return env


def _x_cache(svc: Service, message: str) -> str:
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        stream = stream_chat(http, "GET", f"/chat/{message}", headers=bearer())
    assert stream.names[-1] == "done"
    return stream.headers["x-cache"]


def test_a_cached_reply_lives_for_the_ttl_and_no_longer(store: RedisServer | None) -> None:
    with running_service(_env(store, TTL), workers=1) as svc:
        assert [_x_cache(svc, "ttl-me"), _x_cache(svc, "ttl-me")] == ["MISS", "HIT"]
        if store is not None:
            direct = store.client()
            [key] = [k for k in store.keys("chat:cache:*") if not k.endswith(b":lock")]
            assert 0 < direct.pttl(key) <= TTL * 1000
        time.sleep(TTL + 0.2)  # the cache's own clock is what is under test
        assert _x_cache(svc, "ttl-me") == "MISS"
        assert metric(svc.url, "chat_cache_requests_total", '{result="hit"}') == 1
        assert metric(svc.url, "chat_cache_requests_total", '{result="miss"}') == 2


def test_a_ttl_of_zero_turns_the_cache_off(store: RedisServer | None) -> None:
    with running_service(_env(store, 0), workers=1) as svc:
        assert [_x_cache(svc, "never-kept") for _ in range(3)] == ["MISS"] * 3
        assert metric(svc.url, "chat_cache_requests_total", '{result="hit"}') == 0
        assert metric(svc.url, "chat_backend_streams_total", '{backend="demo"}') == 3
    if store is not None:
        assert store.keys("chat:cache:*") == []


def test_by_default_a_cached_reply_is_only_replayed_to_its_own_user(
    store: RedisServer | None,
) -> None:
    """CHAT_CACHE_SCOPE defaults to `user`. Before, it was `global`: `X-Cache: HIT` told any
    user that someone else had asked exactly this within the TTL, and a reply written for
    one user's context was served to another. `global` stays for those who want it."""

    def x_cache(svc: Service, user: str) -> str:
        with httpx.Client(base_url=svc.url, timeout=30) as http:
            stream = stream_chat(http, "GET", "/chat/shared", headers=bearer(make_token(sub=user)))
        return stream.headers["x-cache"]

    with running_service(_env(store, 60), workers=1) as svc:
        assert [x_cache(svc, u) for u in ("ann", "bob", "ann")] == ["MISS", "MISS", "HIT"]
    env = {**_env(store, 60), "CHAT_CACHE_SCOPE": "global"}
    with running_service(env, workers=1) as svc:
        assert [x_cache(svc, u) for u in ("cat", "dan")] == ["MISS", "HIT"]
