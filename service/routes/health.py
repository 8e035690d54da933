"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import AppServices

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Answers 200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Draining, or a dependency is down"}})
async def readyz(services: AppServices) -> JSONResponse:
    """Answers 200 when ready for traffic, or 503 naming what is not."""
    if services.drain.draining:
        return JSONResponse({"detail": "shutting down"}, status_code=503)
    store = services.store
    if store is not None and not await store.ping():
        return JSONResponse({"detail": "redis unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})
