"""The HTTP application (imports FastAPI, so it is loaded only to serve).

Two parts: `PredictService`, the model work of one classifier chosen at start (decode → dynamic batch →
top-k results, readiness, the model card), and `router`, the routes, each a small function that reads the
request and calls the service. A new route is one more function on the router. No request can name a file;
model work is batched off the event loop; every bad input is a 4xx with {"detail": reason}."""
from __future__ import annotations

import asyncio
import base64
import hmac
import html
import io
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .._version import __version__
from ..inference.classifier import ImageClassifier
from ..errors import UserError
from ..decoding import ImageDecodeError, ImageTooLarge, NotAnImage, image_size, load_uint8, open_rgb
from .batcher import DynamicBatcher
from .metrics import Metrics
from .settings import ServeSettings

ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/predict", "/docs", "/openapi.json")
PROTECTED = ("/v1/", "/metrics")  # need an API key when the service has keys; /healthz, /readyz, / stay open
TOP_K = re.compile(r"[0-9]{1,4}")  # ASCII digits only (str.isdigit also accepts "²")


TRIM_EVERY_S = 10.0


def _malloc_trim():
    """glibc's malloc_trim, or None on another C library."""
    import ctypes
    import ctypes.util
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class RequestError(Exception):
    """A client error with its HTTP status; becomes {"detail": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class PredictService:
    """decode → batch → results for one classifier, with the batcher's lifetime and readiness."""

    def __init__(self, clf: ImageClassifier, settings: ServeSettings, metrics: Metrics) -> None:
        self.clf, self.settings, self.metrics = clf, settings, metrics
        self.keys = KeyRing(settings)  # the one reader of the key file: access checks and /docs ask it
        self.ready = False
        self.batcher: DynamicBatcher | None = None
        self.stopping: asyncio.Event | None = None  # set on SIGTERM: uploads still arriving are ended with 503
        # Decoding threads: one core fewer than the machine has, so that however large the uploads, a core is
        # left for the event loop and the model (on 2 cores, two bomb decodes in parallel stalled /healthz 1.3 s).
        self.decoders = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                           thread_name_prefix="resnetlab-decode")
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin_shutdown(self) -> None:
        """Callable from a signal handler or another thread."""
        if self._loop is not None and self.stopping is not None:
            self._loop.call_soon_threadsafe(self.stopping.set)

    def run_model(self, batch: torch.Tensor) -> torch.Tensor:
        return self.clf.logits(batch)

    async def warm_up(self) -> None:
        s = self.clf.policy.input_size
        loop = asyncio.get_running_loop()
        # first calls pay for allocation and kernel choice; each pass size once, so none is paid for under load
        for n in self.settings.warm_up_sizes:
            await loop.run_in_executor(None, self.run_model, torch.zeros(n, 3, s, s, dtype=torch.uint8))
        self.ready = True

    @asynccontextmanager
    async def lifespan(self, app):
        self._loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        self.batcher = DynamicBatcher(self.run_model, self.settings.max_batch, self.settings.max_wait_ms,
                                      self.metrics.batch_done, sizes=self.settings.pass_sizes)
        await self.batcher.start()
        warm = asyncio.create_task(self.warm_up())
        trim = asyncio.create_task(self.release_freed_memory())
        try:
            yield
        finally:
            self.ready = False
            trim.cancel()
            if not warm.done():
                warm.cancel()
            await self.batcher.stop()  # requests already queued are answered first
            self.decoders.shutdown(wait=False)

    async def release_freed_memory(self) -> None:
        """Once the service has had no /v1/ request for TRIM_EVERY_S, hand the pages that the C heaps hold free
        back to the system (glibc's malloc_trim): a burst of large requests otherwise leaves the process at its
        high-water mark for good. Only when quiet: a trim locks each heap in turn and takes 0.5-1 s on a loaded
        process, and a request arriving meanwhile waits for it (a periodic trim stalled /healthz 1.4 s)."""
        trim = _malloc_trim()
        if trim is None:
            return
        loop = asyncio.get_running_loop()
        trimmed_at = self.metrics.work_seen  # nothing to return before the first request
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            if self.metrics.quiet_for(TRIM_EVERY_S) and self.metrics.work_seen != trimmed_at:
                trimmed_at = self.metrics.work_seen  # once per quiet spell: an idle process has nothing new to return
                await loop.run_in_executor(self.decoders, trim, 0)

    def decode(self, files: list[tuple[str, bytes]]) -> torch.Tensor:
        """Every file's pixels. First every header (format, size: no pixel decoded) against the per-image and
        per-request pixel budgets, then the pixels. Runs in a worker thread, never on the event loop."""
        self.check_budget(files)
        return torch.stack([torch.from_numpy(self._guard(name, lambda d=data: load_uint8(
            io.BytesIO(d), self.clf.policy, self.settings.max_pixels)).copy()) for name, data in files])

    def check_budget(self, files: list[tuple[str, bytes]]) -> None:
        """Every header (format, size: no pixel decoded) against the per-image and per-request pixel budgets."""
        total = 0
        for name, data in files:
            if not data:
                raise RequestError(400, f"{name}: empty file")
            w, h = self._guard(name, lambda d=data: image_size(io.BytesIO(d), self.settings.max_pixels))
            total += w * h
        if total > self.settings.max_request_pixels:
            raise RequestError(413, f"the request's images hold {total:,} pixels, over the limit of "
                               f"{self.settings.max_request_pixels:,} per request")

    @staticmethod
    def _guard(name: str, work):
        try:
            return work()
        except NotAnImage as e:
            raise RequestError(415, f"{name}: {e}") from None
        except ImageTooLarge as e:
            raise RequestError(413, f"{name}: image too large: {e}") from None
        except ImageDecodeError as e:
            raise RequestError(400, f"{name}: cannot decode image ({e})") from None

    def top_k(self, top_k: str | None) -> int:
        k = self.settings.default_top_k
        if top_k is not None:
            if not TOP_K.fullmatch(top_k) or int(top_k) < 1:
                raise RequestError(400, f"top_k must be a positive integer of at most 4 digits, got {top_k[:20]!r}")
            k = int(top_k)
        return min(k, len(self.clf.classes))

    async def classify(self, files: list[tuple[str, bytes]], k: int, token) -> dict:
        self.check_files(files)
        # off the event loop, always: a tiny file can declare a huge image
        pixels = await asyncio.get_running_loop().run_in_executor(self.decoders, self.decode, files)
        logits = await self.batcher.submit(pixels, token)
        top = logits.float().softmax(1).topk(k, dim=1)
        classes = self.clf.classes
        return {"model": self.clf.metadata["arch"], "predictions": [
            {"file": name, "top": [{"class": classes[j], "prob": round(q, 6)} for q, j in zip(p, idx)]}
            for (name, _), p, idx in zip(files, top.values.tolist(), top.indices.tolist())]}

    def check_files(self, files: list[tuple[str, bytes]]) -> None:
        if not files:
            raise RequestError(400, "no image in the request: send multipart file fields or a raw image body")
        if len(files) > self.settings.max_files:
            raise RequestError(413, f"too many files: at most {self.settings.max_files} per request")

    def explain_files(self, files: list[tuple[str, bytes]], k: int, target: str | None) -> dict:
        """Top-k classes and a Grad-CAM overlay (PNG, base64) per file. In a worker thread: budgets first (from
        the headers), then decoding, then the model's forward and backward (serialised with the batcher's)."""
        self.check_budget(files)
        images = [self._guard(name, lambda d=data: open_rgb(io.BytesIO(d), self.settings.max_pixels))
                  for name, data in files]
        if target is not None and target.isdigit():
            target = int(target)
        try:
            self.clf.target_index(target)
        except UserError as e:
            raise RequestError(400, str(e)) from None
        tops = self.clf.predict(images, top_k=k)
        out = []
        for (name, _), top, e in zip(files, tops, self.clf.explain(images, target=target)):
            buf = io.BytesIO()
            e.overlay.save(buf, format="PNG")
            out.append({"file": name, "top": [{"class": t["class"], "prob": round(t["prob"], 6)} for t in top["top"]],
                        "explained": {"class": e.label, "prob": round(e.prob, 6)},
                        "overlay_png": base64.b64encode(buf.getvalue()).decode("ascii")})
        return {"model": self.clf.metadata["arch"], "method": "gradcam", "explanations": out}

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
                "batching": {"max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms,
                             "pass_sizes": list(s.pass_sizes) if s.pass_sizes else None}}


async def read_body(request: Request, limit: int, timeout_s: float, stopping: asyncio.Event | None = None) -> bytes:
    """The whole body, within `limit` bytes and `timeout_s` seconds (a client that drips its upload gets 408),
    or 499 when the client goes away (nginx's code: counted, not a server error, no traceback), or 503 when
    the server is shutting down before the upload is complete (so SIGTERM does not wait for slow clients)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body is over the limit of {limit:,} bytes")
            chunks.append(chunk)
    task = asyncio.ensure_future(read())
    stop = asyncio.ensure_future(stopping.wait()) if stopping is not None else None
    try:
        await asyncio.wait([t for t in (task, stop) if t is not None], timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stop is not None:
            stop.cancel()
    if not task.done():
        task.cancel()
        if stopping is not None and stopping.is_set():
            raise RequestError(503, "the server is shutting down; send the request again") from None
        raise RequestError(408, f"request body not received within {timeout_s:g} s") from None
    try:
        task.result()
    except ClientDisconnect:
        raise RequestError(499, "client closed the connection before sending the whole request") from None
    return b"".join(chunks)


async def uploaded_files(request: Request, body: bytes, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each multipart file field, or of the raw body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):  # media types are case-insensitive (RFC 9110)
        return [("body", body)] if body else []
    params = ctype.partition(";")[2]  # the form parser wants the media type in lower case
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    headers.append((b"content-type", f"multipart/form-data;{params}".encode("latin-1")))

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(dict(request.scope, headers=headers), replay).form(
            max_files=settings.max_files, max_fields=100, max_part_size=settings.max_body_bytes)
    except HTTPException as e:
        if "Too many files" in str(e.detail):
            raise RequestError(413, f"too many files: at most {settings.max_files} per request") from None
        raise RequestError(400, f"malformed multipart body: {e.detail}") from None
    files = [(getattr(v, "filename", None) or k, await v.read()) for k, v in form.multi_items()
             if not isinstance(v, str)]
    await form.close()
    return files


async def service(request: Request) -> PredictService:
    """The app's PredictService (async: FastAPI runs a sync dependency on its thread pool)."""
    return request.app.state.service


router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))


async def docs(request: Request) -> HTMLResponse:
    """The API described from its own OpenAPI schema, as plain HTML (no scripts or assets from elsewhere)."""
    schema = request.app.openapi()
    rows = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            rows.append(f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td><td>{html.escape(params)}"
                        f"</td><td>{html.escape(op.get('summary', ''))}. {html.escape(op.get('description', ''))}"
                        f"</td></tr>")
    auth = ("Send the API key as <code>Authorization: Bearer KEY</code> or <code>X-API-Key: KEY</code> on /v1/* and "
            "/metrics." if request.app.state.service.keys.keys() else "This service has no API keys.")
    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{html.escape(schema['info']['title'])} API</title>"
                        f"<h1>{html.escape(schema['info']['title'])} {html.escape(schema['info']['version'])}</h1>"
                        f"<p>{html.escape(schema['info'].get('description', ''))}</p><p>{auth}</p>"
                        f"<table border=1 cellpadding=4><tr><th>route</th><th>query</th><th>what</th></tr>"
                        f"{''.join(rows)}</table><p>Machine-readable: <a href=/openapi.json>/openapi.json</a></p>")


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
        body = await read_body(request, svc.settings.max_body_bytes, svc.settings.read_timeout_s, svc.stopping)
        files = await uploaded_files(request, body, svc.settings)
        return await svc.classify(files, k, token)
    finally:
        token.release()


@router.post("/v1/explain", summary="Explain the classes of images (Grad-CAM)",
             description="The same uploads and limits as /v1/predict. Returns per file the top_k classes, the class "
                         "explained (`target`: a class name or index; default the predicted one) and a PNG of the "
                         "image with its Grad-CAM heat map overlaid, base64-encoded. 501 on the ONNX backend.")
async def explain(request: Request, top_k: str | None = None, target: str | None = None,
                  svc: PredictService = Depends(service)) -> dict:
    k = svc.top_k(top_k)
    if svc.clf.backend != "torch":
        raise RequestError(501, "explanations need the PyTorch model: serve the .safetensors checkpoint "
                                "(--backend torch)")
    try:
        from ..inference.explain import require_captum
        require_captum()
    except UserError as e:
        raise RequestError(501, str(e)) from None
    if not svc.ready:
        raise RequestError(503, "model is still loading; retry shortly (see /readyz)")
    body = await read_body(request, svc.settings.max_body_bytes, svc.settings.read_timeout_s, svc.stopping)
    files = await uploaded_files(request, body, svc.settings)
    svc.check_files(files)
    return await asyncio.get_running_loop().run_in_executor(svc.decoders, svc.explain_files, files, k, target)


async def request_error(request: Request, e: RequestError) -> JSONResponse:
    return JSONResponse({"detail": e.message}, status_code=e.status)


def create_app(clf: ImageClassifier, settings: ServeSettings | None = None) -> "MetricsMiddleware":
    """The ASGI application (FastAPI inside a metrics layer) serving `clf`."""
    settings = settings or ServeSettings()
    svc = PredictService(clf, settings, Metrics())
    app = FastAPI(title="resnetlab", version=__version__, lifespan=svc.lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None,
                  description=f"{clf.metadata['arch']} image classifier ({len(clf.classes)} classes)")
    app.state.service = svc
    app.add_exception_handler(RequestError, request_error)
    app.include_router(router)
    if settings.docs:
        app.add_api_route("/docs", docs, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    return MetricsMiddleware(AccessMiddleware(app, settings, svc.keys), svc.metrics)


class KeyRing:
    """The service's API keys, re-read when the key file changes (so keys rotate without a restart)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._stamp = self._file_stamp()
        self._keys = [k.encode() for k in settings.keys()]

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.settings.api_key_file)
            return st.st_mtime_ns, st.st_size
        except (OSError, TypeError):
            return None  # no key file, or it went away: keep the keys last read

    def keys(self) -> list[bytes]:
        if self.settings.api_key_file:
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                try:
                    self._keys = [k.encode() for k in self.settings.keys()]
                    self._stamp = stamp
                except Exception:  # a half-written key file: keep the keys last read
                    pass
        return self._keys

    def accepts(self, given: bytes) -> bool:
        ok = False
        for key in self.keys():  # every key compared, in constant time each
            ok |= hmac.compare_digest(given, key)
        return ok


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; "
                                                 b"style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
                                                 b"frame-ancestors 'none'")]


class AccessMiddleware:
    """Who may call: the Host header allowlist (DNS rebinding), API keys on /v1/* and /metrics, CORS only for
    the configured origins, and security headers on every response. Pure ASGI, one line per refusal."""

    def __init__(self, app, settings: ServeSettings, ring: "KeyRing") -> None:
        self.app, self.settings = app, settings
        self.state = app.state
        self.hosts = settings.host_names()
        self.ring = ring
        self.origins = {o.rstrip("/") for o in settings.cors_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                (b"access-control-allow-headers", b"authorization, x-api-key, content-type"),
                (b"access-control-allow-methods", b"GET, POST")] if origin and origin in self.origins else []

        async def send_secured(message):
            if message["type"] == "http.response.start":
                extra = [h for h in SECURITY_HEADERS + cors if h[0] not in {k.lower() for k, _ in message["headers"]}]
                message = dict(message, headers=list(message["headers"]) + extra)
            await send(message)

        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 \
            else host
        if self.hosts is not None and name not in self.hosts:
            return await _refuse(send_secured, 403, f"host {host[:100]!r} is not served here (allowed: "
                                 f"{', '.join(sorted(self.hosts))}; see --allowed-host)")
        path = scope["path"]
        if scope["method"] == "OPTIONS" and cors:
            return await _refuse(send_secured, 204, None)
        keys = self.ring.keys()
        if keys and path.startswith(PROTECTED):
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not given or not self.ring.accepts(given):
                return await _refuse(send_secured, 401, "missing or wrong API key: send Authorization: Bearer KEY "
                                     "or X-API-Key: KEY", [(b"www-authenticate", b'Bearer realm="resnetlab"')])
        await self.app(scope, receive, send_secured)


async def _refuse(send, status: int, detail: str | None, headers: list | None = None) -> None:
    import json
    body = b"" if detail is None else json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


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

        work = route.startswith("/v1/")
        self.metrics.in_flight += 1
        if work:
            self.metrics.work_begins()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            if work:
                self.metrics.work_ends()
            self.metrics.request_done(route, status["code"], time.perf_counter() - start)
