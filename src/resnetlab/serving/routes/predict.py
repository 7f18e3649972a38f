"""Classification: images in, the top-k classes of each out, through the answering version's dynamic batcher. The
same handler answers for the default model, a model's default version, and a given version."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..service import PredictService, current_service
from ..uploads import read_body, uploaded_files

router = APIRouter()

DESCRIPTION = ("Send images as multipart files (any field name, up to max_files) or one image as the raw request "
               "body. Returns the top_k classes of each, with the model and version that answered.")


async def _predict(request: Request, svc: PredictService, top_k: str | None, name: str | None = None,
                   version: str | None = None) -> dict:
    with svc.answering(request, name, version) as sv:
        k = svc.top_k(sv, top_k)
        token = sv.batcher.expect()  # an open batch may wait for this request while it is read and decoded
        try:
            body = await read_body(request, svc.settings.max_body_bytes, svc.settings.read_timeout_s, svc.stopping)
            files = await uploaded_files(request, body, svc.settings)
            return await svc.classify(sv, files, k, token)
        finally:
            token.release()


@router.post("/v1/predict", summary="Classify images with the default model", description=DESCRIPTION)
async def predict(request: Request, top_k: str | None = None, svc: PredictService = Depends(current_service)) -> dict:
    return await _predict(request, svc, top_k)


@router.post("/v1/models/{name}/predict", summary="Classify images with a model's default version",
             description=DESCRIPTION)
async def predict_model(request: Request, name: str, top_k: str | None = None,
                        svc: PredictService = Depends(current_service)) -> dict:
    return await _predict(request, svc, top_k, name)


@router.post("/v1/models/{name}/versions/{version}/predict", summary="Classify images with a given version",
             description=DESCRIPTION)
async def predict_version(request: Request, name: str, version: str, top_k: str | None = None,
                          svc: PredictService = Depends(current_service)) -> dict:
    return await _predict(request, svc, top_k, name, version)
