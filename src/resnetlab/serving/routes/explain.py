"""Explanations: Grad-CAM heat maps of the classes of uploaded images (the PyTorch backend only)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from ...errors import UserError
from ..service import PredictService, RequestError, current_service
from ..uploads import read_body, uploaded_files

router = APIRouter()

DESCRIPTION = ("The same uploads and limits as /v1/predict. Returns per file the top_k classes, the class explained "
               "(`target`: a class name or index; default the predicted one) and a PNG of the image with its "
               "Grad-CAM heat map overlaid, base64-encoded. 501 on the ONNX backend.")


async def _explain(request: Request, svc: PredictService, top_k: str | None, target: str | None,
                   name: str | None = None, version: str | None = None) -> dict:
    with svc.answering(request, name, version) as sv:
        k = svc.top_k(sv, top_k)
        if sv.clf.backend != "torch":
            raise RequestError(501, "explanations need the PyTorch model: serve the .safetensors checkpoint "
                                    "(--backend torch)")
        try:
            from ...inference.explain import require_captum
            require_captum()
        except UserError as e:
            raise RequestError(501, str(e)) from None
        body = await read_body(request, svc.settings.max_body_bytes, svc.settings.read_timeout_s, svc.stopping)
        files = await uploaded_files(request, body, svc.settings)
        svc.check_files(files)
        return await asyncio.get_running_loop().run_in_executor(svc.decoders, svc.explain_files, sv, files, k,
                                                                target)


@router.post("/v1/explain", summary="Explain the classes of images (Grad-CAM), default model",
             description=DESCRIPTION)
async def explain(request: Request, top_k: str | None = None, target: str | None = None,
                  svc: PredictService = Depends(current_service)) -> dict:
    return await _explain(request, svc, top_k, target)


@router.post("/v1/models/{name}/explain", summary="Explain with a model's default version", description=DESCRIPTION)
async def explain_model(request: Request, name: str, top_k: str | None = None, target: str | None = None,
                        svc: PredictService = Depends(current_service)) -> dict:
    return await _explain(request, svc, top_k, target, name)


@router.post("/v1/models/{name}/versions/{version}/explain", summary="Explain with a given version",
             description=DESCRIPTION)
async def explain_version(request: Request, name: str, version: str, top_k: str | None = None,
                          target: str | None = None, svc: PredictService = Depends(current_service)) -> dict:
    return await _explain(request, svc, top_k, target, name, version)
