"""The HTTP application (imports FastAPI, so it is loaded only to serve).

Two parts: `PredictService`, the model work of one classifier chosen at start (decode → dynamic batch →
top-k results, readiness, the model card), and `router`, the routes, each a small function that reads the
request and calls the service. A new route is one more function on the router. No request can name a file;
model work is batched off the event loop; every bad input is a 4xx with {"detail": reason}."""
from __future__ import annotations

import asyncio
import io
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from .._version import __version__
from ..inference.classifier import ImageClassifier
from ..preprocessing import ImageDecodeError, ImageTooLarge, NotAnImage, load_uint8
from .batcher import DynamicBatcher
from .metrics import Metrics
from .settings import ServeSettings

SMALL = 256 * 1024  # uploads up to this size are decoded on the event loop (a thread hop costs more)
ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/predict", "/docs", "/openapi.json")


class RequestError(Exception):
    """A client error with its HTTP status; becomes {"detail": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class PredictService:
    """decode → batch → results for one classifier, with the batcher's lifetime and readiness."""

    def __init__(self, clf: ImageClassifier, settings: ServeSettings, metrics: Metrics) -> None:
        self.clf, self.settings, self.metrics = clf, settings, metrics
        self.ready = False
        self.batcher: DynamicBatcher | None = None

    def run_model(self, batch: torch.Tensor) -> torch.Tensor:
        return self.clf.logits(batch)

    async def warm_up(self) -> None:
        s = self.clf.policy.input_size
        loop = asyncio.get_running_loop()
        for n in sorted({1, self.settings.max_batch}):  # first calls pay for allocation and kernel choice
            await loop.run_in_executor(None, self.run_model, torch.zeros(n, 3, s, s, dtype=torch.uint8))
        self.ready = True

    @asynccontextmanager
    async def lifespan(self, app):
        self.batcher = DynamicBatcher(self.run_model, self.settings.max_batch, self.settings.max_wait_ms,
                                      self.metrics.batch_done)
        await self.batcher.start()
        warm = asyncio.create_task(self.warm_up())
        try:
            yield
        finally:
            self.ready = False
            if not warm.done():
                warm.cancel()
            await self.batcher.stop()  # requests already queued are answered first

    def decode(self, files: list[tuple[str, bytes]]) -> torch.Tensor:
        out = []
        for name, data in files:
            if not data:
                raise RequestError(400, f"{name}: empty file")
            try:
                out.append(torch.from_numpy(load_uint8(io.BytesIO(data), self.clf.policy,
                                                       self.settings.max_pixels).copy()))
            except NotAnImage as e:
                raise RequestError(415, f"{name}: {e}") from None
            except ImageTooLarge as e:
                raise RequestError(413, f"{name}: image too large: {e}") from None
            except ImageDecodeError as e:
                raise RequestError(400, f"{name}: cannot decode image ({e})") from None
        return torch.stack(out)

    def top_k(self, top_k: str | None) -> int:
        k = self.settings.default_top_k
        if top_k is not None:
            if not top_k.isdigit() or int(top_k) < 1:
                raise RequestError(400, f"top_k must be a positive integer, got {top_k!r}")
            k = int(top_k)
        return min(k, len(self.clf.classes))

    async def classify(self, files: list[tuple[str, bytes]], k: int, token) -> dict:
        if not files:
            raise RequestError(400, "no image in the request: send multipart file fields or a raw image body")
        if len(files) > self.settings.max_files:
            raise RequestError(413, f"too many files: at most {self.settings.max_files} per request")
        big = sum(len(d) for _, d in files) > SMALL
        pixels = await asyncio.to_thread(self.decode, files) if big else self.decode(files)
        logits = await self.batcher.submit(pixels, token)
        top = logits.float().softmax(1).topk(k, dim=1)
        classes = self.clf.classes
        return {"model": self.clf.metadata["arch"], "predictions": [
            {"file": name, "top": [{"class": classes[j], "prob": round(q, 6)} for q, j in zip(p, idx)]}
            for (name, _), p, idx in zip(files, top.values.tolist(), top.indices.tolist())]}

    def card(self) -> dict[str, Any]:
        clf, s = self.clf, self.settings
        m = clf.metadata
        params = sum(p.numel() for p in clf.model.parameters()) if clf.model is not None else None
        return {"arch": m["arch"], "kwargs": m.get("kwargs") or {}, "backend": clf.backend,
                "classes": clf.classes, "num_classes": len(clf.classes), "input_size": clf.input_size,
                "resize": {"mode": clf.policy.mode, "decode_size": clf.policy.input_size},
                "mean": list(m["mean"]), "std": list(m["std"]), "params": params,
                "metrics": m.get("metrics") or {}, "trained_epochs": m.get("epoch"),
                "limits": {"max_body_bytes": s.max_body_bytes, "max_files": s.max_files, "max_pixels": s.max_pixels},
                "batching": {"max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms}}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploaded_files(request: Request, body: bytes, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each multipart file field, or of the raw body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return [("body", body)] if body else []

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, replay).form(max_files=settings.max_files, max_fields=100,
                                                         max_part_size=settings.max_body_bytes)
    except HTTPException as e:
        if "Too many files" in str(e.detail):
            raise RequestError(413, f"too many files: at most {settings.max_files} per request") from None
        raise RequestError(400, f"malformed multipart body: {e.detail}") from None
    files = [(getattr(v, "filename", None) or k, await v.read()) for k, v in form.multi_items()
             if not isinstance(v, str)]
    await form.close()
    return files


def service(request: Request) -> PredictService:
    return request.app.state.service


router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded and warmed up")
async def readyz(svc: PredictService = Depends(service)):
    if not svc.ready:
        return JSONResponse({"ready": False}, status_code=503)
    return {"ready": True}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def prometheus(svc: PredictService = Depends(service)) -> PlainTextResponse:
    return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/model", summary="The model being served")
async def model(svc: PredictService = Depends(service)) -> dict:
    return svc.card()


@router.post("/v1/predict", summary="Classify images",
             description="Send images as multipart files (any field name, up to max_files) or one image "
                         "as the raw request body. Returns the top_k classes of each.")
async def predict(request: Request, top_k: str | None = None, svc: PredictService = Depends(service)) -> dict:
    k = svc.top_k(top_k)
    if not svc.ready:
        raise RequestError(503, "model is still loading; retry shortly (see /readyz)")
    token = svc.batcher.expect()  # an open batch may wait for this request while it is read and decoded
    try:
        body = await read_body(request, svc.settings.max_body_bytes)
        files = await uploaded_files(request, body, svc.settings)
        return await svc.classify(files, k, token)
    finally:
        token.release()


async def request_error(request: Request, e: RequestError) -> JSONResponse:
    return JSONResponse({"detail": e.message}, status_code=e.status)


def create_app(clf: ImageClassifier, settings: ServeSettings | None = None) -> "MetricsMiddleware":
    """The ASGI application (FastAPI inside a metrics layer) serving `clf`."""
    settings = settings or ServeSettings()
    svc = PredictService(clf, settings, Metrics())
    app = FastAPI(title="resnetlab", version=__version__, lifespan=svc.lifespan,
                  description=f"{clf.metadata['arch']} image classifier ({len(clf.classes)} classes)")
    app.state.service = svc
    app.add_exception_handler(RequestError, request_error)
    app.include_router(router)
    return MetricsMiddleware(app, svc.metrics)


class MetricsMiddleware:
    """Counts requests by route and status and times them (pure ASGI: Starlette's BaseHTTPMiddleware
    costs a task and a stream copy per request, measured as a large share of a small request's time)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.request_done(route, status["code"], time.perf_counter() - start)
