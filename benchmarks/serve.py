"""Service latency and throughput over loopback, dynamic batching on vs off, and ONNX Runtime vs PyTorch.

Starts `resnetlab serve` as a separate process (batching on: --max-batch 64 --max-wait-ms 5, passes padded
to the pass sizes 1, 2, 4, 8, 16 ... 64 as by default, and the same with --exact-batches; off: --max-batch 1) and loads it with 1, 16 and 64 concurrent keep-alive connections, each request one
CIFAR-10 test image as a PNG body; prints p50/p99 latency and requests/s. The load comes from `wrk`
(Debian package; C, so the load generator takes little of the CPU it shares with the server) with a
small Lua script, else from asyncio + httpx in this process. Also prints each server's anonymous resident
memory (heaps, tensors, kernels) once its cells are done. All servers are measured in the same run
on the same machine.

    python benchmarks/serve.py runs/cifar10_quick/best.safetensors [--seconds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import time

import httpx
import numpy as np
import torch
from PIL import Image

from _common import process_memory_mb, wrk
from resnetlab import load
from resnetlab.data.cifar import load_cifar
from resnetlab.runtime import cpu_model
from resnetlab.testing import ServeProcess


async def drive(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        async def one(k: int) -> None:
            nonlocal failures
            i = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await c.post("/v1/predict", content=bodies[i % len(bodies)],
                                 headers={"content-type": "image/png"})
                latencies.append(time.perf_counter() - t)
                failures += r.status_code != 200
                i += clients
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"req_s": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "n": len(lat), "failures": failures}


def drive_wrk(url: str, body: bytes, clients: int, seconds: float) -> dict:
    """The same measurement by wrk: keep-alive connections, each sending the next request on answer."""
    return wrk(f"{url}/v1/predict", body, "image/png", clients, seconds)


def batch_histogram(url: str) -> str:
    lines = httpx.get(url + "/metrics").text.splitlines()
    total = next(float(ln.split()[1]) for ln in lines if ln.startswith("resnetlab_batch_size_sum"))
    count = next(float(ln.split()[1]) for ln in lines if ln.startswith("resnetlab_batch_size_count"))
    return f"{total / max(count, 1):.1f}"


def runtime_throughput(checkpoint: str, onnx_path: str | None, pixels: torch.Tensor) -> None:
    backends = {"torch": load(checkpoint, device="cpu")}
    if onnx_path:
        backends["onnx"] = load(onnx_path, backend="onnx")
    print("\ninference only (decoded pixels in, logits out; same process, one at a time):")
    print("| backend | batch 1 img/s | batch 64 img/s |\n|---|---|---|")
    for name, clf in backends.items():
        row = []
        for bs in (1, 64):
            x = pixels[:bs]
            for _ in range(3):
                clf.logits(x)
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < 3:
                clf.logits(x)
                n += bs
            row.append(n / (time.perf_counter() - t))
        print(f"| {name} | {row[0]:.0f} | {row[1]:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--onnx", default=None, help="an exported .onnx of the checkpoint (default: beside it, if there)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per (server, concurrency) cell")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--python-client", action="store_true", help="load from httpx even when wrk is installed")
    args = ap.parse_args()
    clf = load(args.checkpoint, device="cpu")
    test = load_cifar((clf.metadata.get("dataset") or {}).get("data_dir"), "cifar10", "test")
    bodies = []
    for i in range(256):
        buf = io.BytesIO()
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(buf, "PNG")
        bodies.append(buf.getvalue())
    import shutil
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; model {clf.metadata.arch} "
          f"{clf.metadata.get('kwargs') or ''}; {args.seconds:.0f} s per cell; load from "
          f"{'wrk' if use_wrk else 'asyncio + httpx'}\n")
    print("| server | clients | req/s | p50 ms | p99 ms | mean batch (cumulative) | non-200 |\n|---|---|---|---|---|---|---|")
    results, memory = {}, {}
    for label, extra in (("batching on (64 / 5 ms)", ["--max-batch", "64", "--max-wait-ms", "5"]),
                         ("batching on, exact batches", ["--max-batch", "64", "--max-wait-ms", "5", "--exact-batches"]),
                         ("batching off", ["--max-batch", "1"])):
        server = ServeProcess(args.checkpoint, *extra, capture=False)
        url = server.url
        try:
            asyncio.run(drive(url, bodies, 8, 2.0))  # warm-up
            for clients in args.clients:
                r = (drive_wrk(url, bodies[0], clients, args.seconds) if use_wrk
                     else asyncio.run(drive(url, bodies, clients, args.seconds)))
                results[(label, clients)] = r
                print(f"| {label} | {clients} | {r['req_s']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                      f"{batch_histogram(url)} | {r['failures']} |", flush=True)
            memory[label] = process_memory_mb(server.proc.pid)["anon_mb"]
        finally:
            server.stop()
    top = max(args.clients)
    on, off = results[("batching on (64 / 5 ms)", top)], results[("batching off", top)]
    exact = results[("batching on, exact batches", top)]
    print(f"\nat {top} clients: batching on {on['req_s']:.0f} req/s vs off {off['req_s']:.0f} req/s = "
          f"{on['req_s'] / off['req_s']:.2f}x; padded to pass sizes vs exact batches {exact['req_s']:.0f} req/s = "
          f"{on['req_s'] / exact['req_s']:.2f}x")
    print("anonymous memory after the cells: " + ", ".join(f"{k} {v:.0f} MB" for k, v in memory.items()))
    onnx_path = args.onnx or (args.checkpoint.rsplit(".", 1)[0] + ".onnx")
    runtime_throughput(args.checkpoint, onnx_path if os.path.exists(onnx_path) else None, test.images[:64])


if __name__ == "__main__":
    main()
