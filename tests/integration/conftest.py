from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import RedisServer
from tests.support.redis_topologies import RedisCluster, redis_of_kind, running_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisCluster]:
    """One Cluster of three primaries for the session; `store` empties it for each test."""
    with running_cluster() as made:
        yield made


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisServer | RedisCluster | None]:
    """Each test that takes it runs three times: with state in worker memory (None), in a
    real redis-server of its own, and in a real Redis Cluster of three primaries."""
    with redis_of_kind(request, request.param) as made:
        yield made
