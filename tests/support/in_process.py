"""The app built in this process and called through httpx's ASGITransport: for branches of
a request's handling that need no real server (the real-process tests cover those)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service.app import create_app
from service.config import Settings
from service.services import Services

from .tokens import SECRET


@asynccontextmanager
async def running_app(**settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    values: dict[str, object] = {"jwt_secret": SECRET, "demo_delay_scale": 0, **settings}
    app = create_app(Settings(**values))  # type: ignore[arg-type]
    inner = app.app
    async with inner.router.lifespan_context(inner):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, inner.state.services
