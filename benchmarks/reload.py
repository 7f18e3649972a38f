"""A service that lives: versions swapped under load, two models flooding each other, and LitServe beside us.

1. Swaps. `resnetlab serve --models REPO --reload poll --poll-s 1` under an open-loop arrival of --rate requests/s
   (each a multipart upload of a real CIFAR-10 test PNG) for --minutes; every --every-s seconds a new version is
   published into the repository (copied under a hidden name, then renamed to its number), one of them broken
   (NaN weights: it must fail its self-check and leave the old version serving). Prints every non-2xx answer, the
   p99 of requests sent during a swap (from publishing to 2 s after the new version answers) against the p99 of
   the rest, and the server's RSS before the first swap and just before each next one.
2. Fairness. Two models (copies of one checkpoint) in one server; `wrk` floods each alone, then both at once;
   prints each model's requests/s together as a share of its requests/s alone.
3. LitServe. The same checkpoint behind LitServe (its own batching on: max_batch_size 64, batch_timeout 5 ms, the
   minimal API in benchmarks/litserve_api.py) and behind `resnetlab serve` (batching as by default) and, when the
   checkpoint's ONNX export is beside it (`resnetlab export CKPT`), the export behind both (ONNX Runtime), each loaded
   by `wrk` with multipart PNG uploads at 1 to 64 connections, servers alternating, --rounds rounds; prints
   requests/s, p50 and p99, and the most requests/s each held with p99 <= 100 ms. LitServe runs from another
   environment (--litserve-python: a venv with `pip install litserve python-multipart`, torch and this package),
   as a user installs it (with uvicorn[standard]: uvloop and httptools).

    python benchmarks/reload.py runs/small/best.safetensors [--minutes 5] [--litserve-python /tmp/litvenv/bin/python]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from _common import machine_line, process_memory_mb
from _common import wrk as load_by_wrk
from resnetlab.data.cifar import load_cifar
from resnetlab.testing import ServeProcess, free_port
from resnetlab.weights import read_checkpoint, save_checkpoint

BOUNDARY = "resnetlabbench7f3a"


def png_bodies(data_dir: str, n: int = 64) -> list[bytes]:
    import io

    from PIL import Image
    test = load_cifar(data_dir, "cifar10", "test")
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def multipart(png: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def publish(ckpt: Path, repo: Path, name: str, version: int, broken: bool = False) -> None:
    staging = repo / name / f".{version}.tmp"
    staging.mkdir(parents=True)
    if broken:
        weights, meta = read_checkpoint(ckpt)
        weights = {k: torch.full_like(v, float("nan")) if k.endswith("fc.weight") else v for k, v in weights.items()}
        save_checkpoint(staging / "model.safetensors", weights, meta)
    else:
        shutil.copyfile(ckpt, staging / "model.safetensors")
    staging.rename(repo / name / str(version))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- 1. swaps under load -------------------------------------------------------------------------------------
async def swaps(ckpt: Path, bodies: list[bytes], rate: float, seconds: float, every_s: float, broken_at: int) -> None:
    repo = Path(tempfile.mkdtemp(prefix="reload-repo-"))
    publish(ckpt, repo, "cifar", 1)
    server = ServeProcess(None, "--models", str(repo), "--reload", "poll", "--poll-s", "1", capture=False)
    pid = server.proc.pid
    rss: list[tuple[float, float]] = []
    records: list[tuple[float, float, int, int]] = []  # send time, latency, status, version
    windows: list[tuple[int, float, float, bool]] = []  # version, published at, answering from (or gave up), ok
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            rss.append((time.perf_counter() - t0, process_memory_mb(pid)["rss_mb"]))
            time.sleep(0.5)
    sampler = threading.Thread(target=sample)
    sampler.start()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    forms = [multipart(b) for b in bodies]
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
        async def one(i: int) -> None:
            sent = time.perf_counter() - t0
            try:
                r = await c.post("/v1/predict", content=forms[i % len(forms)], headers=headers)
                version = r.json().get("version", -1) if r.status_code == 200 else -1
                records.append((sent, time.perf_counter() - t0 - sent, r.status_code, version))
            except httpx.HTTPError as e:
                records.append((sent, time.perf_counter() - t0 - sent, -1, -1))
                print(f"  request {i} failed: {e!r}")

        async def publisher() -> None:
            k = 0
            while True:
                k += 1
                at = every_s / 2 + (k - 1) * every_s
                if at > seconds - 5:
                    return
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                version = k + 1
                publish(ckpt, repo, "cifar", version, broken=k == broken_at)
                published = time.perf_counter() - t0
                deadline = published + (6 if k == broken_at else 30)
                ok = False
                while time.perf_counter() - t0 < deadline:
                    listing = (await c.get("/v1/models")).json()["models"][0]
                    if listing["default_version"] == version:
                        ok = True
                        break
                    await asyncio.sleep(0.05)
                windows.append((version, published, time.perf_counter() - t0, ok))

        tasks = []
        pub = asyncio.create_task(publisher())
        n = int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, i / rate - (time.perf_counter() - t0)))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        await pub
    stop.set()
    sampler.join()
    code, _ = server.stop()
    shutil.rmtree(repo, ignore_errors=True)

    in_swap = [(p - 0.5, a + 2.0) for _, p, a, _ in windows]
    swap_lat = [lat * 1000 for s, lat, st, _ in records if st == 200 and any(a <= s <= b for a, b in in_swap)]
    steady = [lat * 1000 for s, lat, st, _ in records if st == 200 and not any(a <= s <= b for a, b in in_swap)]
    bad = [(round(s, 2), st) for s, _, st, _ in records if not 200 <= st < 300]
    print(f"\n1. swaps: {len(records)} requests at {rate:g}/s over {seconds:.0f} s, {len(windows)} versions published "
          f"(version {broken_at + 1} broken)")
    print(f"   non-2xx answers: {len(bad)}{' ' + str(bad[:10]) if bad else ''}")
    print(f"   steady: n {len(steady)}, p50 {pct(steady, 50):.1f} ms, p99 {pct(steady, 99):.1f} ms")
    print(f"   during swaps: n {len(swap_lat)}, p50 {pct(swap_lat, 50):.1f} ms, p99 {pct(swap_lat, 99):.1f} ms "
          f"({pct(swap_lat, 99) / pct(steady, 99):.2f}x the steady p99)")

    def rss_at(t: float) -> float:
        return statistics.median(r for s, r in rss if t - 2 <= s <= t) if any(t - 2 <= s <= t for s, _ in rss) \
            else float("nan")
    base = rss_at(windows[0][1] - 0.5) if windows else float("nan")
    print(f"   RSS before the first swap: {base:.0f} MB")
    print("   | version | published at s | answering after s | p99 in window ms | RSS before next swap MB |")
    print("   |---|---|---|---|---|")
    for i, (version, published, answering, ok) in enumerate(windows):
        nxt = windows[i + 1][1] - 0.5 if i + 1 < len(windows) else seconds - 0.5
        lat = [lt * 1000 for s, lt, st, _ in records if st == 200 and published - 0.5 <= s <= answering + 2]
        print(f"   | {version}{'' if ok else ' (refused: failed its self-check)'} | {published:.1f} | "
              f"{answering - published:.2f}{'' if ok else ' (kept the old one)'} | {pct(lat, 99):.1f} | "
              f"{rss_at(nxt):.0f} |")
    seen = sorted({v for *_, v in records if v > 0})
    print(f"   versions that answered: {seen}; server exit {code}")


def wrk(url: str, body: bytes, connections: int, seconds: float, threads: int = 1) -> dict:
    return load_by_wrk(url, body, f"multipart/form-data; boundary={BOUNDARY}", connections, seconds, threads)


# --- 2. two models flooding each other ------------------------------------------------------------------------
def fairness(ckpt: Path, body: bytes, seconds: float, connections: int) -> None:
    repo = Path(tempfile.mkdtemp(prefix="reload-fair-"))
    for name in ("a", "b"):
        publish(ckpt, repo, name, 1)
    server = ServeProcess(None, "--models", str(repo), capture=False)
    try:
        urls = {m: f"{server.url}/v1/models/{m}/predict" for m in ("a", "b")}
        wrk(urls["a"], body, connections, 3)  # warm
        alone = {m: wrk(u, body, connections, seconds) for m, u in urls.items()}
        together: dict[str, dict] = {}
        threads = [threading.Thread(target=lambda m=m: together.__setitem__(m, wrk(urls[m], body, connections, seconds)))
                   for m in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)
    print(f"\n2. fairness: two models in one server, {connections} connections each (wrk), {seconds:.0f} s per cell")
    print("   | model | alone req/s | p99 ms | both flooding req/s | p99 ms | share of alone | non-2xx |")
    print("   |---|---|---|---|---|---|---|")
    for m in ("a", "b"):
        a, t = alone[m], together[m]
        print(f"   | {m} | {a['req_s']:.0f} | {a['p99']:.1f} | {t['req_s']:.0f} | {t['p99']:.1f} | "
              f"{t['req_s'] / a['req_s']:.0%} | {a['failures'] + t['failures']} |")


# --- 3. LitServe beside us ------------------------------------------------------------------------------------
class LitServeProcess:
    def __init__(self, python: str, ckpt: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        here = Path(__file__).resolve().parent
        # its own process group: LitServe's worker processes are stopped with it (left running, they busy-poll)
        self.proc = subprocess.Popen([python, str(here / "litserve_api.py"), str(ckpt), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"LitServe exited early ({self.proc.returncode})")
            time.sleep(0.3)
        raise RuntimeError("LitServe not ready after 120 s")

    def stop(self) -> None:
        import signal
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass


def litserve_compare(ckpt: Path, onnx: Path | None, body: bytes, python: str, rounds: int, seconds: float,
                     connections: tuple[int, ...]) -> None:
    """Each server with the checkpoint in PyTorch and, given its ONNX export, in ONNX Runtime."""
    results: dict[tuple[str, int], list[dict]] = {}
    servers = ["resnetlab", "litserve"] + (["resnetlab onnx", "litserve onnx"] if onnx else [])
    for r in range(rounds):
        for server_name in (servers if r % 2 == 0 else servers[::-1]):
            model = onnx if server_name.endswith("onnx") else ckpt
            if server_name.startswith("resnetlab"):
                server = ServeProcess(model, *(("--backend", "onnx") if model == onnx else ()), capture=False)
                url = server.url + "/v1/predict"
            else:
                server = LitServeProcess(python, model)
                url = server.url + "/predict"
            try:
                wrk(url, body, 16, 2)  # warm: first batches of each size
                for n in connections:
                    results.setdefault((server_name, n), []).append(wrk(url, body, n, seconds, threads=2))
            finally:
                server.stop()
    print(f"\n3. resnetlab serve against LitServe, multipart PNG uploads by wrk, {seconds:.0f} s per cell, median of "
          f"{rounds} alternating rounds")
    print("   | server | connections | req/s | p50 ms | p99 ms | non-2xx |")
    print("   |---|---|---|---|---|---|")
    held = {}
    for name in servers:
        for n in connections:
            cells = results[(name, n)]
            rps = statistics.median(c["req_s"] for c in cells)
            p50 = statistics.median(c["p50"] for c in cells)
            p99 = statistics.median(c["p99"] for c in cells)
            print(f"   | {name} | {n} | {rps:.0f} | {p50:.1f} | {p99:.1f} | {sum(c['failures'] for c in cells)} |")
            if p99 <= 100:
                held[name] = max(held.get(name, 0.0), rps)
    for runtime in ("", " onnx") if onnx else ("",):
        ours, theirs = held.get("resnetlab" + runtime, 0.0), held.get("litserve" + runtime, 0.0)
        print(f"   {'ONNX Runtime' if runtime else 'PyTorch'}: most req/s with p99 <= 100 ms: resnetlab {ours:.0f}, "
              f"LitServe {theirs:.0f} ({ours / theirs if theirs else float('nan'):.2f}x); by connections: " + ", ".join(
                  f"{n}: {statistics.median(c['req_s'] for c in results[('resnetlab' + runtime, n)]) / statistics.median(c['req_s'] for c in results[('litserve' + runtime, n)]):.2f}x"
                  for n in connections))
    if onnx:
        print(f"   resnetlab serving the ONNX export against LitServe with the PyTorch checkpoint, at p99 <= 100 ms: "
              f"{held.get('resnetlab onnx', 0.0) / held['litserve'] if held.get('litserve') else float('nan'):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data-dir", default=os.environ.get("RESNETLAB_DATA", "../shared/data"))
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s during the swaps")
    ap.add_argument("--every-s", type=float, default=30.0, help="a new version every this many seconds")
    ap.add_argument("--broken", type=int, default=5, help="which published version (1st, 2nd ...) is broken")
    ap.add_argument("--fair-seconds", type=float, default=10.0)
    ap.add_argument("--fair-connections", type=int, default=16)
    ap.add_argument("--litserve-python", default=None, help="python of an environment with litserve installed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="per LitServe comparison cell")
    ap.add_argument("--connections", default="1,4,8,16,32,64")
    ap.add_argument("--parts", default="swaps,fairness,litserve")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/reload.py needs wrk (apt-get install wrk)")
    print(machine_line())
    ckpt = Path(args.checkpoint).resolve()
    bodies = png_bodies(args.data_dir)
    parts = args.parts.split(",")
    if "swaps" in parts:
        asyncio.run(swaps(ckpt, bodies, args.rate, args.minutes * 60, args.every_s, args.broken))
    if "fairness" in parts:
        fairness(ckpt, multipart(bodies[3]), args.fair_seconds, args.fair_connections)
    if "litserve" in parts:
        if args.litserve_python is None:
            print("\n3. LitServe: skipped (no --litserve-python)")
        else:
            onnx = ckpt.with_suffix(".onnx")
            litserve_compare(ckpt, onnx if onnx.is_file() else None, multipart(bodies[3]), args.litserve_python,
                             args.rounds, args.seconds, tuple(int(c) for c in args.connections.split(",")))


if __name__ == "__main__":
    main()
