"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from ..service import PredictService, current_service

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded and warmed up")
async def readyz(svc: PredictService = Depends(current_service)):
    if not svc.ready:
        return JSONResponse({"ready": False}, status_code=503)
    return {"ready": True}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def prometheus(svc: PredictService = Depends(current_service)) -> PlainTextResponse:
    return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
