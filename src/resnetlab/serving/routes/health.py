"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE
from ..service import PredictService, current_service

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the models loaded and warmed up, one version at least serving")
async def readyz(svc: PredictService = Depends(current_service)):
    if not svc.ready:
        return JSONResponse({"ready": False}, status_code=503)
    return {"ready": True}


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def prometheus(svc: PredictService = Depends(current_service)) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
