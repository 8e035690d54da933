"""Stream leases live on Redis's clock, so pods whose clocks drift still share one cap.

Two real services on one real Redis, one of them with its wall clock moved by libfaketime.
Before, each pod wrote lease expiries from its own clock: a pod 20 s behind wrote leases
already expired (Redis dropped the lease set, and that pod enforced no cap at all), and a
pod 20 s ahead evicted the other pods' live leases as expired.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.clock import clock_offset_env
from tests.support.redis import RedisServer, running_redis
from tests.support.service import Service, running_service
from tests.support.sse import read_stream
from tests.support.tokens import bearer, make_token

SKEW = 20


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _env(redis: RedisServer) -> dict[str, str]:
    return {
        "CHAT_REDIS_URL": redis.url,
        "CHAT_MAX_STREAMS_PER_USER": "1",
        "CHAT_DEMO_DELAY_SCALE": "1",  # a stream lasts about 4.5 s: long enough to hold
        "CHAT_CACHE_TTL": "0",
    }


def _hold(http: httpx.Client, path: str, token: str) -> httpx.Response:
    """Open a stream and read its first event, so its slot is surely taken."""
    response = http.send(http.build_request("GET", path, headers=bearer(token)), stream=True)
    assert response.status_code == 200
    chunks = response.iter_raw()
    assert read_stream(response, time.monotonic(), limit=1, chunks=chunks).names[0] == "start"
    response.extensions["chunks"] = chunks  # keep the stream open with the response
    return response


def _token(sub: str) -> str:
    # Issued before any pod's clock says now: a pod behind would find a fresh iat in its
    # future and refuse the token.
    return make_token(sub=sub, iat=int(time.time()) - 2 * SKEW)


def _second(svc: Service, token: str) -> int:
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        return http.get("/chat/second", headers=bearer(token)).status_code


@pytest.mark.parametrize("offset", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_pod_with_a_drifting_clock_enforces_the_shared_stream_cap(
    redis: RedisServer, offset: int
) -> None:
    env = _env(redis)
    skewed_env = {**env, **clock_offset_env(offset)}
    with (
        running_service(env, workers=1) as true,
        running_service(skewed_env, workers=1) as skewed,
    ):
        # The skewed pod's own leases hold on itself and on the other pod...
        token = _token(f"drift-{offset}-own")
        with httpx.Client(base_url=skewed.url, timeout=30) as http:
            held = _hold(http, "/chat/first", token)
            try:
                assert _second(skewed, token) == 429
                assert _second(true, token) == 429
            finally:
                held.close()
        # ...and it never evicts the other pod's live leases.
        token = _token(f"drift-{offset}-other")
        with httpx.Client(base_url=true.url, timeout=30) as http:
            held = _hold(http, "/chat/first", token)
            try:
                assert _second(skewed, token) == 429
            finally:
                held.close()
