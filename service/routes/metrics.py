"""Prometheus metrics, summed over every worker."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ..observability import metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def get_metrics() -> Response:
    """Prometheus text exposition of the service's metrics."""
    # Multiprocess collection reads every worker's files: keep that off the event loop.
    return Response(await run_in_threadpool(metrics.collect), media_type=CONTENT_TYPE_LATEST)
