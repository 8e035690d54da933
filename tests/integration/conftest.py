from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import RedisServer, running_redis


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisServer | None]:
    """Each test that takes it runs twice: with state in worker memory (None), and in a
    real redis-server of its own."""
    if request.param == "memory":
        yield None
        return
    with running_redis() as server:
        yield server
