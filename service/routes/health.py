"""Liveness and readiness probes (answered on CHAT_METRICS_PORT too: app.MetricsPortSplit)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import Ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Answers 200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Draining, or a dependency is down"}})
async def readyz(readiness: Ready) -> JSONResponse:
    """Answers 200 when ready for traffic, or 503 naming what is not."""
    reason = await readiness.not_ready()
    if reason is not None:
        return JSONResponse({"detail": reason}, status_code=503)
    return JSONResponse({"status": "ready"})
