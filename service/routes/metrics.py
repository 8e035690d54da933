"""Prometheus metrics, summed over every worker."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import Collection

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def get_metrics(collection: Collection) -> Response:
    """Prometheus text exposition of the service's metrics."""
    return Response(await collection.collect(), media_type=CONTENT_TYPE_LATEST)
