"""Explanations: Grad-CAM heat maps of the classes of uploaded images (the PyTorch backend only)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from ...errors import UserError
from ..service import PredictService, RequestError, current_service
from ..uploads import read_body, uploaded_files

router = APIRouter()


@router.post("/v1/explain", summary="Explain the classes of images (Grad-CAM)",
             description="The same uploads and limits as /v1/predict. Returns per file the top_k classes, the class "
                         "explained (`target`: a class name or index; default the predicted one) and a PNG of the "
                         "image with its Grad-CAM heat map overlaid, base64-encoded. 501 on the ONNX backend.")
async def explain(request: Request, top_k: str | None = None, target: str | None = None,
                  svc: PredictService = Depends(current_service)) -> dict:
    k = svc.top_k(top_k)
    if svc.clf.backend != "torch":
        raise RequestError(501, "explanations need the PyTorch model: serve the .safetensors checkpoint "
                                "(--backend torch)")
    try:
        from ...inference.explain import require_captum
        require_captum()
    except UserError as e:
        raise RequestError(501, str(e)) from None
    if not svc.ready:
        raise RequestError(503, "model is still loading; retry shortly (see /readyz)")
    body = await read_body(request, svc.settings.max_body_bytes, svc.settings.read_timeout_s, svc.stopping)
    files = await uploaded_files(request, body, svc.settings)
    svc.check_files(files)
    return await asyncio.get_running_loop().run_in_executor(svc.decoders, svc.explain_files, files, k, target)
