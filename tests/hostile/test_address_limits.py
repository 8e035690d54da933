"""Failed authentications and unauthenticated streams are limited per client address
(CHAT_IP_RATE_LIMIT), the address being the peer's or the X-Forwarded-For entry a trusted
proxy added, never one the client wrote. Before, nothing limited them: anyone could make
the service verify tokens and stream `GET /` (seconds of work each) without end."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.redis import RedisServer, running_redis
from tests.support.service import running_service
from tests.support.tokens import bearer, make_token

LIMIT = 5
BAD = {"Authorization": f"Bearer {make_token(ttl=-600)}"}


def _statuses(http: httpx.Client, count: int, **kwargs: object) -> list[int]:
    return [http.get("/chat/hi", **kwargs).status_code for _ in range(count)]  # type: ignore[arg-type]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def test_failed_authentications_are_limited_per_address_and_good_tokens_still_pass() -> None:
    with (
        running_service({"CHAT_IP_RATE_LIMIT": f"{LIMIT}/minute"}, workers=1) as svc,
        httpx.Client(base_url=svc.url) as http,
    ):
        assert _statuses(http, LIMIT + 2, headers=BAD) == [401] * LIMIT + [429] * 2
        refused = http.get("/chat/hi")  # no token at all is a failed authentication too
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "address" in refused.json()["detail"]
        # The address is not locked out: a valid token is still served.
        assert http.get("/chat/hi", headers=bearer()).status_code == 200
        assert metric(svc.url, "chat_rate_limited_total", '{limit="ip"}') == 3


def test_a_malformed_authorization_header_spends_the_address_budget() -> None:
    """A header that is no bearer token at all is a failed authentication like a bad token:
    nothing else stops a client from sending them without end."""
    malformed = ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Token abc", "Bearer:abc", "Basic"]
    assert len(malformed) == LIMIT
    with (
        running_service({"CHAT_IP_RATE_LIMIT": f"{LIMIT}/minute"}, workers=1) as svc,
        httpx.Client(base_url=svc.url) as http,
    ):
        statuses = [
            http.get("/chat/hi", headers={"Authorization": value}).status_code
            for value in malformed
        ]
        refused = http.get("/chat/hi", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
        # Each is counted, the refused one too; then each spends from the address.
        assert metric(svc.url, "chat_auth_failures_total", '{reason="malformed"}') == LIMIT + 1
    assert statuses == [401] * LIMIT
    assert refused.status_code == 429


def test_the_plain_text_stream_spends_the_same_budget_and_the_page_does_not() -> None:
    with (
        running_service({"CHAT_IP_RATE_LIMIT": f"{LIMIT}/minute"}, workers=1) as svc,
        httpx.Client(base_url=svc.url) as http,
    ):
        streams = [http.get("/").status_code for _ in range(LIMIT - 1)]
        assert streams == [200] * (LIMIT - 1)
        assert http.get("/chat/hi", headers=BAD).status_code == 401  # the last of the budget
        assert http.get("/").status_code == 429
        page = http.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "<html" in page.text


def test_the_address_is_the_one_a_trusted_proxy_added() -> None:
    with (
        running_service({"CHAT_IP_RATE_LIMIT": f"{LIMIT}/minute"}, workers=1) as svc,
        httpx.Client(base_url=svc.url) as http,
    ):
        # The peer (127.0.0.1) is a trusted proxy: the address is the entry it appended.
        first = {**BAD, "X-Forwarded-For": "198.51.100.1"}
        assert _statuses(http, LIMIT + 1, headers=first) == [401] * LIMIT + [429]
        # Another address behind the same proxy has a budget of its own...
        other = {**BAD, "X-Forwarded-For": "198.51.100.2"}
        assert _statuses(http, 1, headers=other) == [401]
        # ...and an address the client wrote in front of the proxy's entry changes nothing.
        spoofed = {**BAD, "X-Forwarded-For": "203.0.113.9, 198.51.100.1"}
        assert _statuses(http, 3, headers=spoofed) == [429] * 3


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    env = {"CHAT_IP_RATE_LIMIT": f"{LIMIT}/minute", "CHAT_TRUSTED_PROXIES": "192.0.2.10"}
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        statuses = [
            http.get("/chat/hi", headers={**BAD, "X-Forwarded-For": f"198.51.100.{n}"}).status_code
            for n in range(LIMIT + 2)
        ]
    assert statuses == [401] * LIMIT + [429] * 2


def test_with_redis_the_budget_holds_across_workers(redis: RedisServer) -> None:
    env = {"CHAT_IP_RATE_LIMIT": f"{LIMIT}/minute", "CHAT_REDIS_URL": redis.url}
    with running_service(env, workers=2) as svc:
        workers = sorted(svc.worker_pids())
        assert len(workers) == 2
        statuses = []
        for n in range(2 * LIMIT):
            # Alternate the workers: per-worker memory would let each one allow LIMIT.
            with svc.served_by(workers[n % 2]), httpx.Client(base_url=svc.url) as http:
                statuses.append(http.get("/chat/hi", headers=BAD).status_code)
    assert statuses == [401] * LIMIT + [429] * LIMIT
