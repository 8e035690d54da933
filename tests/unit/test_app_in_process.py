"""The app built in process and called through httpx's ASGITransport: branches that a
real server reaches only at awkward moments (the drain, a dependency down)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service.app import create_app
from service.config import Settings
from tests.support.tokens import SECRET


@asynccontextmanager
async def running_app(**settings: object) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    app = create_app(Settings(jwt_secret=SECRET, demo_delay_scale=0, **settings))  # type: ignore[arg-type]
    inner = app.app
    async with inner.router.lifespan_context(inner):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, inner


def test_readyz_says_503_while_draining() -> None:
    async def scenario() -> tuple[int, int, str]:
        async with running_app() as (client, inner):
            before = (await client.get("/readyz")).status_code
            inner.state.drain.begin()  # as the worker's SIGTERM handler does
            await asyncio.sleep(0)  # `begin` only schedules: let the loop start the drain
            during = await client.get("/readyz")
            return before, during.status_code, during.json()["detail"]

    assert asyncio.run(scenario()) == (200, 503, "shutting down")
