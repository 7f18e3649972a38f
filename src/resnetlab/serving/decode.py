"""Decoding uploads for the service, in a worker process.

Every upload is checked from its headers first (format, size: no pixel decoded) against the per-image and
per-request pixel budgets, then decoded by resnetlab.decoding. That work runs in a separate process, never in
the server's: Pillow holds the GIL for stretches of a large decode (its WebP frame copy, the RGBA → RGB
conversion), which in a thread stalled the event loop up to ~1 s; a process also keeps the heap a large decode
fills out of the server, hands it back when it is done, and can be replaced if a decoder crashes.

The worker imports this module only (Pillow and numpy, no torch): it starts from a fork server in a fraction of
a second. Its failures come back as RequestError, which pickles with its status.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..decoding import ImageDecodeError, ImageTooLarge, NotAnImage, ResizePolicy, image_size, load_uint8, open_rgb

# after a request this large the worker hands its freed heap back (malloc_trim: cheap in a small process that
# does nothing else meanwhile); smaller ones leave too little behind to be worth the call
TRIM_AFTER_PIXELS = 4_000_000


class RequestError(Exception):
    """A client error with its HTTP status; becomes {"detail": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)  # both in args: it pickles across the process boundary whole
        self.status, self.message = status, message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Budget:
    """Pixels one image, and all images of one request together, may hold (read from headers)."""
    per_image: int
    per_request: int


def guard(name: str, work):
    """Run a decoding step for file `name`; its errors become the request's 415, 413 or 400."""
    try:
        return work()
    except NotAnImage as e:
        raise RequestError(415, f"{name}: {e}") from None
    except ImageTooLarge as e:
        raise RequestError(413, f"{name}: image too large: {e}") from None
    except ImageDecodeError as e:
        raise RequestError(400, f"{name}: cannot decode image ({e})") from None


def check_budget(files: list[tuple[str, bytes]], budget: Budget) -> int:
    """Every header against the budgets; the request's total pixels."""
    total = 0
    for name, data in files:
        if not data:
            raise RequestError(400, f"{name}: empty file")
        w, h = guard(name, lambda d=data: image_size(io.BytesIO(d), budget.per_image))
        total += w * h
    if total > budget.per_request:
        raise RequestError(413, f"the request's images hold {total:,} pixels, over the limit of "
                           f"{budget.per_request:,} per request")
    return total


def decode_for_model(files: list[tuple[str, bytes]], policy: ResizePolicy, budget: Budget) -> np.ndarray:
    """(N, 3, S, S) uint8: every file decoded and resized by the model's policy. Runs in the worker."""
    total = check_budget(files, budget)
    try:
        return np.stack([guard(name, lambda d=data: load_uint8(io.BytesIO(d), policy, budget.per_image))
                         for name, data in files])
    finally:
        _trim_after(total)


def decode_originals(files: list[tuple[str, bytes]], budget: Budget) -> list[np.ndarray]:
    """(H, W, 3) uint8 per file at its own size, oriented, RGB: what explanations are drawn on. In the worker."""
    total = check_budget(files, budget)
    try:
        return [np.asarray(guard(name, lambda d=data: open_rgb(io.BytesIO(d), budget.per_image)))
                for name, data in files]
    finally:
        _trim_after(total)


def _trim_after(pixels: int) -> None:
    if pixels >= TRIM_AFTER_PIXELS:
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the heap stays as the C library keeps it
            pass


def _ready() -> bool:
    return True


class Decoders:
    """The decoding worker processes: `await run(fn, *args)` runs one of the functions above in one of them.
    A worker that dies (a decoder crash, the kernel's OOM killer) fails its request with 500 and the pool is
    replaced, so the next request is decoded again."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")  # not fork: the server has threads and torch's state
        ctx.set_forkserver_preload([__name__])  # workers fork from a server that already imported Pillow
        return ProcessPoolExecutor(self.workers, mp_context=ctx)

    async def start(self) -> None:
        """Start the workers now, so the first request does not wait for them."""
        await asyncio.gather(*(self.run(_ready) for _ in range(self.workers)))

    async def run(self, fn, *args):
        pool = self._pool
        try:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False)
            raise RequestError(500, "the decoding process ended while decoding this request; it has been "
                                    "restarted, send the request again") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
