"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..shutdown import Drain
from ..store import Store

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Answers 200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Draining, or a dependency is down"}})
async def readyz(request: Request) -> JSONResponse:
    """Answers 200 when ready for traffic, or 503 naming what is not."""
    drain: Drain = request.app.state.drain
    if drain.draining:
        return JSONResponse({"detail": "shutting down"}, status_code=503)
    store: Store | None = request.app.state.store
    if store is not None and not await store.ping():
        return JSONResponse({"detail": "redis unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})
