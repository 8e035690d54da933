"""Prometheus metrics, summed over every worker."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ..observability import metrics

router = APIRouter(tags=["metrics"])


class SharedCollection:
    """Scrapes that arrive while a collection runs share its result: collecting reads every
    worker's files, so a flood of scrapes costs one collection at a time, not one each."""

    def __init__(self) -> None:
        self._running: asyncio.Future[bytes] | None = None

    async def collect(self) -> bytes:
        if self._running is None:
            # Multiprocess collection reads files: keep that off the event loop.
            self._running = asyncio.ensure_future(run_in_threadpool(metrics.collect))
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, _: asyncio.Future[bytes]) -> None:
        self._running = None


@router.get("/metrics", response_class=Response)
async def get_metrics(request: Request) -> Response:
    """Prometheus text exposition of the service's metrics."""
    collection: SharedCollection = request.app.state.metrics_collection
    return Response(await collection.collect(), media_type=CONTENT_TYPE_LATEST)
