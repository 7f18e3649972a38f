"""Model cards: what is being served, by model and version."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..service import PredictService, current_service

router = APIRouter()


@router.get("/v1/model", summary="The default model's card")
async def model(request: Request, svc: PredictService = Depends(current_service)) -> dict:
    with svc.answering(request) as sv:
        return svc.card(sv)


@router.get("/v1/models", summary="The models served, with their loaded versions")
async def models(svc: PredictService = Depends(current_service)) -> dict:
    hub = svc.hub
    out = []
    for name, m in sorted(hub.models.items()):
        default = m.default_version
        out.append({"name": name, "default": name == hub.default_model, "versions": sorted(m.versions),
                    "default_version": default.version if default else None,
                    "arch": default.clf.metadata.arch if default else None,
                    "num_classes": len(default.clf.classes) if default else None})
    return {"default_model": hub.default_model, "models": out}


@router.get("/v1/models/{name}", summary="A model's default version's card")
async def model_card(request: Request, name: str, svc: PredictService = Depends(current_service)) -> dict:
    with svc.answering(request, name) as sv:
        return svc.card(sv)


@router.get("/v1/models/{name}/versions/{version}", summary="A given version's card")
async def version_card(request: Request, name: str, version: str,
                       svc: PredictService = Depends(current_service)) -> dict:
    with svc.answering(request, name, version) as sv:
        return svc.card(sv)
