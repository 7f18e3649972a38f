"""The model card: what is being served."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from ..service import PredictService, current_service

router = APIRouter()


@router.get("/v1/model", summary="The model being served")
async def model(svc: PredictService = Depends(current_service)) -> dict:
    return svc.card()
