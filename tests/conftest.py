from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.service import Service, running_service


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    """One real service (2 workers, no demo delays) shared by tests that only read from it."""
    with running_service({"CHAT_CORS_ORIGINS": "https://app.example.com"}) as svc:
        yield svc


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http
