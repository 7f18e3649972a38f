"""Dynamic batching: concurrent requests share one forward pass.

A forward pass on a batch of 64 costs far less than 64 passes of one (on a CPU the per-call overhead
and the poor use of vector units at batch 1 dominate), so a service under load should group what
arrives together, as TorchServe, Triton and LitServe do. A batch takes everything queued (up to
`max_batch` images); it waits for more, at most `max_wait_ms` after it opened, only while other requests
are on their way (announced with `expect()` when their upload is being read and decoded), so a lone
request never waits for company that is not coming. While the model computes, new requests queue and
form the next batch: under load batches grow by themselves. The model runs in one worker thread, off
the event loop, so the server keeps accepting and answering (health checks, errors) meanwhile.

Each pass runs at one of a few sizes (`settings.pass_sizes`): a batch is padded with blank images up to
the next one and the padding's rows are dropped from the answer, as TensorFlow Serving's
`allowed_batch_sizes` does. On a CPU, oneDNN builds and caches kernels (primitives) per input shape: with
every size from 1 to 64 a ResNet-20 process held ~130 MB more, reached only once load first formed the
larger batches (docs/results/serving.md, "Pass sizes"). With a fixed set of sizes, all are built during the warm-up.
"""
from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from .settings import pass_size_for


@dataclass
class _Job:
    pixels: torch.Tensor  # uint8 (n, 3, H, W)
    future: asyncio.Future = field(repr=False)
    queued_at: float = 0.0  # loop time when submitted


class DynamicBatcher:
    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 64,
                 max_wait_ms: float = 5.0, on_batch: Callable[[int], None] | None = None,
                 sizes: tuple[int, ...] | None = None, on_queue: Callable[[float], None] | None = None,
                 turn: asyncio.Lock | None = None) -> None:
        """sizes: the sizes a pass runs at (padded up to the next; the last must be max_batch); None: each
        pass at the size of its batch. on_queue: told each request's seconds from submit to its pass. turn: a
        lock shared by the batchers of several models, held while a pass computes (asyncio's Lock wakes its
        waiters in order, so models take turns)."""
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        if sizes is not None and (max(sizes) != max_batch or min(sizes) < 1):
            raise ValueError(f"pass sizes {sizes} must be >= 1 and end at max_batch {max_batch}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.sizes = tuple(sorted(sizes)) if sizes is not None else None
        self.on_batch = on_batch or (lambda n: None)
        self.on_queue = on_queue or (lambda s: None)
        self.turn = turn
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnetlab-model")
        self._worker: asyncio.Task | None = None
        self._carry: _Job | None = None
        self.coming = 0  # requests announced by expect() that have not been submitted yet
        self._arrival = asyncio.Event()

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Answer everything already submitted, then stop."""
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    def expect(self) -> "Expected":
        """Announce a request that is being read and decoded, so an open batch may wait for it (up to
        max_wait_ms). Pass the token to submit(); release() it if the request fails before that."""
        self.coming += 1
        return Expected(self)

    async def submit(self, pixels: torch.Tensor, token: "Expected | None" = None) -> torch.Tensor:
        """Logits for uint8 pixels (n, 3, H, W); n may exceed max_batch (it is then split)."""
        if self._worker is None:
            raise RuntimeError("batcher is not running")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        await self._queue.put(_Job(pixels, future, loop.time()))
        if token is not None:
            token.release()  # queued first, then no longer "coming": an open batch cannot miss it
        self._arrival.set()
        return await future

    async def _next(self, timeout: float | None) -> _Job | None | bool:
        """The next job; False when none came within the timeout."""
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._next(None)
            if first is None:
                break
            jobs, n = [first], len(first.pixels)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                job = await self._next(0)  # what is queued already
                if job is False:
                    if not self.coming or loop.time() >= deadline:
                        break  # nobody else is on the way: go
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                    continue
                if job is None:
                    stopping = True
                    break
                if n + len(job.pixels) > self.max_batch:
                    self._carry = job  # opens the next batch instead of overfilling this one
                    break
                jobs.append(job)
                n += len(job.pixels)
            await self._compute(loop, jobs)
        if self._carry is not None:  # a job held back when the stop arrived
            await self._compute(loop, [self._carry])
            self._carry = None

    async def _compute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        live = [j for j in jobs if not j.future.done()]  # a client that went away cancelled its future
        if not live:
            return
        batch = torch.cat([j.pixels for j in live])
        try:
            async with self.turn or contextlib.nullcontext():
                logits = await self._timed(loop, live, batch)
        except Exception as e:  # the model failed: every waiting request learns it
            for j in live:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        start = 0
        for j in live:
            end = start + len(j.pixels)
            if not j.future.done():
                j.future.set_result(logits[start:end])
            start = end

    async def _timed(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], batch: torch.Tensor) -> torch.Tensor:
        now = loop.time()
        for j in jobs:
            self.on_queue(now - j.queued_at)
        return await loop.run_in_executor(self._executor, self._run_chunks, batch)

    def _notify(self) -> None:
        self._arrival.set()

    def _run_chunks(self, batch: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(batch), self.max_batch):
            chunk = batch[i:i + self.max_batch]
            self.on_batch(len(chunk))
            out.append(self.run(self._padded(chunk))[:len(chunk)])
        return torch.cat(out)

    def _padded(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.sizes is None:
            return chunk
        size = pass_size_for(len(chunk), self.sizes)
        if size == len(chunk):
            return chunk
        return torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])


class Expected:
    """A request announced to the batcher; released once (on submit, or when the request fails)."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher, self.live = batcher, True

    def release(self) -> None:
        if self.live:
            self.live = False
            self.batcher.coming -= 1
            self.batcher._notify()  # a batch waiting for this request stops waiting if it failed
