"""The predict service: the model work of the models a hub serves (decode → the version's dynamic batch → top-k
results, Grad-CAM explanations, readiness, model cards), apart from HTTP. Routes (serving/routes/) read requests,
pick a version with `hub.resolve` and hold it with `hub.hold` while they call this; every client error is a
RequestError, which the app turns into {"detail": reason}."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Iterator

import torch
from starlette.requests import Request

from ..decoding import ImageDecodeError, ImageTooLarge, NotAnImage, image_size, load_uint8, open_rgb
from ..errors import UserError
from .hub import ModelHub, RequestError, ServedVersion
from .keys import KeyRing
from .metrics import SERVED, Metrics
from .settings import ServeSettings

__all__ = ["PredictService", "RequestError", "current_service"]

TOP_K = re.compile(r"[0-9]{1,4}")  # ASCII digits only (str.isdigit also accepts "²")
TARGET_INDEX = re.compile(r"[0-9]{1,9}")  # a class index, ASCII digits only (else it is a class name)


TRIM_EVERY_S = 10.0


def malloc_trim():
    """glibc's malloc_trim, or None on another C library."""
    import ctypes
    import ctypes.util
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class PredictService:
    """decode → batch → results for the hub's models, with their lifetime and readiness."""

    def __init__(self, hub: ModelHub, settings: ServeSettings, metrics: Metrics) -> None:
        self.hub, self.settings, self.metrics = hub, settings, metrics
        # the one reader of each key file: access checks and /docs ask them
        self.keys = KeyRing(settings.api_key_file, settings.keys)
        self.admin_keys = KeyRing(settings.admin_key_file, settings.admin_keys)
        self.stopping: asyncio.Event | None = None  # set on SIGTERM: uploads still arriving are ended with 503
        # Decoding threads: one core fewer than the machine has, so that however large the uploads, a core is
        # left for the event loop and the model (on 2 cores, two bomb decodes in parallel stalled /healthz 1.3 s).
        self.decoders = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                           thread_name_prefix="resnetlab-decode")
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        return self.hub.ready

    @contextmanager
    def answering(self, request: Request, name: str | None = None, version: str | None = None
                  ) -> Iterator[ServedVersion]:
        """The version that answers this request (a model's given version, its default, or the default model's),
        held until the request is answered: a swap meanwhile does not move it. Metrics are labelled with it."""
        sv = self.hub.resolve(name, version)
        with self.hub.hold(sv):
            request.scope[SERVED] = (sv.name, str(sv.version))
            yield sv

    def begin_shutdown(self) -> None:
        """Callable from a signal handler or another thread."""
        if self._loop is not None and self.stopping is not None:
            self._loop.call_soon_threadsafe(self.stopping.set)

    @asynccontextmanager
    async def lifespan(self, app):
        self._loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        start = asyncio.create_task(self.hub.start())
        trim = asyncio.create_task(self.release_freed_memory())
        poll = (asyncio.create_task(self.hub.poll_forever(self.settings.poll_s))
                if self.settings.reload == "poll" else None)
        try:
            yield
        finally:
            for task in (trim, poll):
                if task is not None:
                    task.cancel()
            if not start.done():
                start.cancel()
            await self.hub.stop()  # requests already queued are answered first
            self.decoders.shutdown(wait=False)

    async def release_freed_memory(self) -> None:
        """Once the service has had no /v1/ request for TRIM_EVERY_S, hand the pages that the C heaps hold free
        back to the system (glibc's malloc_trim): a burst of large requests otherwise leaves the process at its
        high-water mark for good. Only when quiet: a trim locks each heap in turn and takes 0.5-1 s on a loaded
        process, and a request arriving meanwhile waits for it (a periodic trim stalled /healthz 1.4 s)."""
        trim = malloc_trim()
        if trim is None:
            return
        loop = asyncio.get_running_loop()
        trimmed_at = self.metrics.work_seen  # nothing to return before the first request
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            if self.metrics.quiet_for(TRIM_EVERY_S) and self.metrics.work_seen != trimmed_at:
                trimmed_at = self.metrics.work_seen  # once per quiet spell: an idle process has nothing new to return
                await loop.run_in_executor(self.decoders, trim, 0)

    def decode(self, sv: ServedVersion, files: list[tuple[str, bytes]]) -> torch.Tensor:
        """Every file's pixels, by the version's own preprocessing. First every header (format, size: no pixel
        decoded) against the per-image and per-request pixel budgets, then the pixels. Runs in a worker thread,
        never on the event loop."""
        self.check_budget(files)
        policy = sv.clf.policy
        return torch.stack([torch.from_numpy(self._guard(name, lambda d=data: load_uint8(
            io.BytesIO(d), policy, self.settings.max_pixels)).copy()) for name, data in files])

    def check_budget(self, files: list[tuple[str, bytes]], max_pixels: int | None = None) -> None:
        """Every header (format, size: no pixel decoded) against the per-image (max_pixels, default the service's)
        and per-request pixel budgets."""
        max_pixels = max_pixels or self.settings.max_pixels
        total = 0
        for name, data in files:
            if not data:
                raise RequestError(400, f"{name}: empty file")
            w, h = self._guard(name, lambda d=data: image_size(io.BytesIO(d), max_pixels))
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

    def top_k(self, sv: ServedVersion, top_k: str | None) -> int:
        k = self.settings.default_top_k
        if top_k is not None:
            if not TOP_K.fullmatch(top_k) or int(top_k) < 1:
                raise RequestError(400, f"top_k must be a positive integer of at most 4 digits, got {top_k[:20]!r}")
            k = int(top_k)
        return min(k, len(sv.clf.classes))

    async def classify(self, sv: ServedVersion, files: list[tuple[str, bytes]], k: int, token) -> dict:
        self.check_files(files)
        # off the event loop, always: a tiny file can declare a huge image
        pixels = await asyncio.get_running_loop().run_in_executor(self.decoders, self.decode, sv, files)
        logits = await sv.batcher.submit(pixels, token)
        top = logits.float().softmax(1).topk(k, dim=1)
        classes = sv.clf.classes
        return {"model": sv.clf.metadata.arch, "name": sv.name, "version": sv.version, "predictions": [
            {"file": name, "top": [{"class": classes[j], "prob": round(q, 6)} for q, j in zip(p, idx)]}
            for (name, _), p, idx in zip(files, top.values.tolist(), top.indices.tolist())]}

    def check_files(self, files: list[tuple[str, bytes]]) -> None:
        if not files:
            raise RequestError(400, "no image in the request: send multipart file fields or a raw image body")
        if len(files) > self.settings.max_files:
            raise RequestError(413, f"too many files: at most {self.settings.max_files} per request")

    def explain_files(self, sv: ServedVersion, files: list[tuple[str, bytes]], k: int, target: str | None) -> dict:
        """Top-k classes and a Grad-CAM overlay (PNG, base64) per file. In a worker thread: budgets first (from
        the headers), then decoding, then the model's forward and backward (serialised with the batcher's)."""
        budget = min(self.settings.explain_max_pixels, self.settings.max_pixels)
        self.check_budget(files, budget)
        images = [self._guard(name, lambda d=data: open_rgb(io.BytesIO(d), budget)) for name, data in files]
        if target is not None and TARGET_INDEX.fullmatch(target):
            target = int(target)
        clf = sv.clf
        try:
            clf.target_index(target)
        except UserError as e:
            raise RequestError(400, str(e)) from None
        tops = clf.predict(images, top_k=k)
        out = []
        for (name, _), top, e in zip(files, tops, clf.explain(images, target=target)):
            buf = io.BytesIO()
            e.overlay.save(buf, format="PNG")
            out.append({"file": name, "top": [{"class": t["class"], "prob": round(t["prob"], 6)} for t in top["top"]],
                        "explained": {"class": e.label, "prob": round(e.prob, 6)},
                        "overlay_png": base64.b64encode(buf.getvalue()).decode("ascii")})
        return {"model": clf.metadata.arch, "name": sv.name, "version": sv.version, "method": "gradcam",
                "explanations": out}

    def card(self, sv: ServedVersion) -> dict[str, Any]:
        clf, s = sv.clf, self.settings
        m = clf.metadata
        params = sum(p.numel() for p in clf.model.parameters()) if clf.model is not None else None
        max_batch = sv.batcher.max_batch if sv.batcher is not None else s.max_batch
        return {"name": sv.name, "version": sv.version, "file": sv.files.path.name,
                "arch": m.arch, "kwargs": m.kwargs, "task": m.task, "backend": clf.backend,
                "classes": clf.classes, "num_classes": len(clf.classes), "input_size": clf.input_size,
                "resize": {"mode": clf.policy.mode, "decode_size": clf.policy.input_size},
                "mean": list(m.mean), "std": list(m.std), "params": params,
                "metrics": m.metrics, "trained_epochs": m.epoch,
                "limits": {"max_body_bytes": s.max_body_bytes, "max_files": s.max_files, "max_pixels": s.max_pixels,
                           "explain_max_pixels": s.explain_max_pixels},
                "batching": {"max_batch": max_batch, "max_wait_ms": sv.batcher.max_wait * 1000 if sv.batcher
                             else s.max_wait_ms, "pass_sizes": list(sv.batcher.sizes) if sv.batcher and
                             sv.batcher.sizes else None,
                             "max_in_flight": sv.config.max_in_flight or s.max_in_flight}}




async def current_service(request: Request) -> PredictService:
    """The app's PredictService, as a FastAPI dependency (async: FastAPI runs a sync dependency on its thread
    pool)."""
    return request.app.state.service
