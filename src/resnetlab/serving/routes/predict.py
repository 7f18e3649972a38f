"""Classification: images in, the top-k classes of each out, through the dynamic batcher."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..service import PredictService, RequestError, current_service
from ..uploads import read_body, uploaded_files

router = APIRouter()


@router.post("/v1/predict", summary="Classify images",
             description="Send images as multipart files (any field name, up to max_files) or one image "
                         "as the raw request body. Returns the top_k classes of each.")
async def predict(request: Request, top_k: str | None = None, svc: PredictService = Depends(current_service)) -> dict:
    k = svc.top_k(top_k)
    if not svc.ready:
        raise RequestError(503, "model is still loading; retry shortly (see /readyz)")
    token = svc.batcher.expect()  # an open batch may wait for this request while it is read and decoded
    try:
        body = await read_body(request, svc.settings.max_body_bytes, svc.settings.read_timeout_s, svc.stopping)
        files = await uploaded_files(request, body, svc.settings)
        return await svc.classify(files, k, token)
    finally:
        token.release()
