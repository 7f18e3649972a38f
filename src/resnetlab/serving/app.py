"""The HTTP application: routes, input limits, metrics (imports FastAPI, so it is loaded only to serve).

Built around one classifier chosen at start (no request can name a file); model work is batched off the
event loop; every bad input is a 4xx with {"detail": reason}."""
from __future__ import annotations

import asyncio
import io
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
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


def _page() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def model_card(clf: ImageClassifier, settings: ServeSettings) -> dict[str, Any]:
    m = clf.metadata
    params = sum(p.numel() for p in clf.model.parameters()) if clf.model is not None else None
    return {"arch": m["arch"], "kwargs": m.get("kwargs") or {}, "backend": clf.backend,
            "classes": clf.classes, "num_classes": len(clf.classes), "input_size": clf.input_size,
            "resize": {"mode": clf.policy.mode, "decode_size": clf.policy.input_size},
            "mean": list(m["mean"]), "std": list(m["std"]), "params": params,
            "metrics": m.get("metrics") or {}, "trained_epochs": m.get("epoch"),
            "limits": {"max_body_bytes": int(settings.max_body_mb * 1e6), "max_files": settings.max_files,
                       "max_pixels": settings.max_pixels},
            "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms}}


def create_app(clf: ImageClassifier, settings: ServeSettings | None = None) -> "MetricsMiddleware":
    """The ASGI application (FastAPI inside a metrics layer) serving `clf`."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    state: dict[str, Any] = {"ready": False, "batcher": None}
    limit = int(settings.max_body_mb * 1e6)

    def run_model(batch: torch.Tensor) -> torch.Tensor:
        return clf.logits(batch)

    async def warm_up() -> None:
        s = clf.policy.input_size
        loop = asyncio.get_running_loop()
        for n in sorted({1, settings.max_batch}):  # first calls pay for allocation and kernel choice
            await loop.run_in_executor(None, run_model, torch.zeros(n, 3, s, s, dtype=torch.uint8))
        state["ready"] = True

    @asynccontextmanager
    async def lifespan(app):
        batcher = DynamicBatcher(run_model, settings.max_batch, settings.max_wait_ms, metrics.batch_done)
        await batcher.start()
        state["batcher"] = batcher
        warm = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            state["ready"] = False
            if not warm.done():
                warm.cancel()
            await batcher.stop()  # requests already queued are answered first

    app = FastAPI(title="resnetlab", version=__version__, lifespan=lifespan,
                  description=f"{clf.metadata['arch']} image classifier ({len(clf.classes)} classes)")
    app.state.settings, app.state.metrics, app.state.classifier = settings, metrics, clf

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and warmed up")
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/model", summary="The model being served")
    async def model() -> dict:
        return model_card(clf, settings)

    async def read_body(request: Request) -> bytes:
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

    async def uploaded_files(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return [("body", body)] if body else []

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            form = await Request(request.scope, replay).form(max_files=settings.max_files,
                                                             max_fields=100, max_part_size=limit)
        except HTTPException as e:
            if "Too many files" in str(e.detail):
                raise RequestError(413, f"too many files: at most {settings.max_files} per request") from None
            raise RequestError(400, f"malformed multipart body: {e.detail}") from None
        files = [(getattr(v, "filename", None) or k, await v.read()) for k, v in form.multi_items()
                 if hasattr(v, "read")]
        await form.close()
        return files

    def decode(files: list[tuple[str, bytes]]) -> torch.Tensor:
        out = []
        for name, data in files:
            if not data:
                raise RequestError(400, f"{name}: empty file")
            try:
                out.append(torch.from_numpy(load_uint8(io.BytesIO(data), clf.policy, settings.max_pixels).copy()))
            except NotAnImage as e:
                raise RequestError(415, f"{name}: {e}") from None
            except ImageTooLarge as e:
                raise RequestError(413, f"{name}: image too large: {e}") from None
            except ImageDecodeError as e:
                raise RequestError(400, f"{name}: cannot decode image ({e})") from None
        return torch.stack(out)

    @app.post("/v1/predict", summary="Classify images",
              description="Send images as multipart files (any field name, up to max_files) or one image "
                          "as the raw request body. Returns the top_k classes of each.")
    async def predict(request: Request, top_k: str | None = None) -> dict:
        k = settings.default_top_k
        if top_k is not None:
            if not top_k.isdigit() or int(top_k) < 1:
                raise RequestError(400, f"top_k must be a positive integer, got {top_k!r}")
            k = int(top_k)
        k = min(k, len(clf.classes))
        if not state["ready"]:
            raise RequestError(503, "model is still loading; retry shortly (see /readyz)")
        batcher: DynamicBatcher = state["batcher"]
        token = batcher.expect()  # an open batch may wait for this request while it is read and decoded
        try:
            return await classify(request, k, batcher, token)
        finally:
            token.release()

    async def classify(request: Request, k: int, batcher: DynamicBatcher, token) -> dict:
        body = await read_body(request)
        files = await uploaded_files(request, body)
        if not files:
            raise RequestError(400, "no image in the request: send multipart file fields or a raw image body")
        if len(files) > settings.max_files:
            raise RequestError(413, f"too many files: at most {settings.max_files} per request")
        pixels = await asyncio.to_thread(decode, files) if sum(len(d) for _, d in files) > SMALL else decode(files)
        logits = await batcher.submit(pixels, token)
        probs = logits.float().softmax(1)
        top = probs.topk(k, dim=1)
        return {"model": clf.metadata["arch"], "predictions": [
            {"file": name, "top": [{"class": clf.classes[j], "prob": round(q, 6)} for q, j in zip(p, idx)]}
            for (name, _), p, idx in zip(files, top.values.tolist(), top.indices.tolist())]}

    return MetricsMiddleware(app, metrics)


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
