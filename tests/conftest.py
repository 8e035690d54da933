from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.service import Service, running_service


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    """One real service (2 workers, no demo delays) shared by tests that only read from it."""
    env = {
        "CHAT_CORS_ORIGINS": "https://app.example.com",
        # Limits out of the way: their own tests set them.
        "CHAT_RATE_LIMIT": "100000/minute",
        "CHAT_MAX_STREAMS_PER_USER": "1000",
    }
    with running_service(env) as svc:
        yield svc


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http
