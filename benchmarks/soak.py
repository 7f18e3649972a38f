"""Soak a real `resnetlab serve` on loopback: its capacity first, then a long run at a share of it, mixing good,
bad, oversized, slow and aborted clients. Prints one row per window: good requests and their p50/p99 latency,
the statuses seen, 5xx counted by the server's own /metrics, and the server's RSS.

    RESNETLAB_DATA=... python benchmarks/soak.py CKPT [--minutes 30] [--load 0.7] [--window-s 300] [--json OUT]

What passes: zero 5xx (seen by clients and in /metrics), RSS after warm-up growing ≤ 5 %, p99 of good
requests steady from window to window. Bounded in count and time; loopback only.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from _common import process_memory_mb
from resnetlab.testing import ServeProcess, webp_bomb


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


GOOD = [_png(i) for i in range(32)]
BOMB = webp_bomb(7000)  # 49 MP in 34 bytes: over the per-image limit, refused from its header


def server_5xx(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("resnetlab_requests_total") and 'status="5' in line)


class Load:
    """Clients of each kind; each call returns (kind, status, seconds)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.host, self.port = url.rsplit("//", 1)[1].split(":")
        # keep-alive shorter than the server's 5 s: a pooled connection the server is closing is never reused
        self.client = httpx.Client(base_url=url, timeout=30,
                                   limits=httpx.Limits(max_connections=64, keepalive_expiry=2.0))

    def good(self) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        r = self.client.post("/v1/predict", content=random.choice(GOOD), headers={"content-type": "image/png"})
        return "good", r.status_code, time.perf_counter() - t0

    def bad(self) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        r = self.client.post("/v1/predict", content=b"definitely not an image")
        return "bad", r.status_code, time.perf_counter() - t0

    def oversized(self) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        r = self.client.post("/v1/predict", files={"f": ("bomb.webp", BOMB, "image/webp")})
        return "oversized", r.status_code, time.perf_counter() - t0

    def slow(self) -> tuple[str, int, float]:
        """A whole request, a few bytes at a time, within the server's timeouts."""
        t0 = time.perf_counter()
        body = random.choice(GOOD)
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection((self.host, int(self.port)), timeout=30) as s:
            for i in range(0, len(head) + len(body), 256):
                s.sendall((head + body)[i:i + 256])
                time.sleep(0.02)
            answer = s.recv(64)
        return "slow", int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0, time.perf_counter() - t0

    def aborted(self) -> tuple[str, int, float]:
        """Promises a body, sends part of it and leaves: the server must count it as the client's doing."""
        t0 = time.perf_counter()
        with socket.create_connection((self.host, int(self.port)), timeout=10) as s:
            s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: 50000\r\n\r\n".encode()
                      + GOOD[0][:100])
        return "aborted", 499, time.perf_counter() - t0


MIX = [("good", 0.80), ("bad", 0.08), ("oversized", 0.04), ("slow", 0.05), ("aborted", 0.03)]


def capacity(load: Load, seconds: float = 5.0, clients: int = 16) -> float:
    stop = time.perf_counter() + seconds
    count = [0]

    def worker():
        while time.perf_counter() < stop:
            if load.good()[1] == 200:
                count[0] += 1
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / seconds


def soak(url: str, pid: int, seconds: float, share: float, window_s: float, log=print) -> dict:
    load = Load(url)
    cap = capacity(load)
    rate = cap * share
    log(f"capacity {cap:.0f} good req/s (16 clients, 5 s); soak at {share:.0%}: {rate:.0f} req/s for {seconds:.0f} s")
    base_5xx = server_5xx(load.client)
    kinds, weights = zip(*MIX)
    windows, results, lock = [], [], threading.Lock()
    last_chunk: list = []
    pool = ThreadPoolExecutor(max_workers=96)

    def run(kind: str) -> None:
        try:
            out = getattr(load, kind)()
        except Exception as e:  # a client-side failure is a finding, not a crash of the benchmark
            out = (kind, -1, 0.0)
            log(f"{kind}: {type(e).__name__}: {e}")
        with lock:
            results.append(out)

    start = time.perf_counter()
    next_window, t_next = start + window_s, start
    while time.perf_counter() - start < seconds:
        t_next += random.expovariate(rate)  # open loop: arrivals do not wait for answers
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pool.submit(run, random.choices(kinds, weights)[0])
        if time.perf_counter() >= next_window:
            with lock:
                chunk, results[:] = list(results), []
            last_chunk = chunk
            windows.append(_window(len(windows) + 1, chunk, process_memory_mb(pid), server_5xx(load.client) - base_5xx))
            log(_row(windows[-1]))
            next_window += window_s
    pool.shutdown(wait=True)
    tail_s = time.perf_counter() - (next_window - window_s)
    if windows and tail_s < window_s / 2:  # answers still arriving at the end belong to the last window
        windows.pop()
        results = last_chunk + results
    if results:
        windows.append(_window(len(windows) + 1, results, process_memory_mb(pid), server_5xx(load.client) - base_5xx))
        log(_row(windows[-1]) + " (final)")
    statuses = Counter()
    for w in windows:
        statuses.update(w["statuses"])
    first = windows[0]["rss_mb"]  # the first window is the warm-up: growth is measured from its end
    return {"capacity_req_s": cap, "rate_req_s": rate, "windows": windows, "statuses": dict(statuses),
            "client_5xx": sum(n for s, n in statuses.items() if 500 <= int(s) < 600),
            "server_5xx": windows[-1]["server_5xx"], "rss_growth": windows[-1]["rss_mb"] / first - 1}


def _window(i: int, chunk: list, rss: dict, s5xx: int) -> dict:
    good = sorted(t for k, s, t in chunk if k == "good" and s == 200)
    q = (lambda p: good[min(len(good) - 1, int(p * len(good)))] * 1000) if good else (lambda p: float("nan"))
    return {"window": i, "good": len(good), "p50_ms": q(0.5), "p99_ms": q(0.99), **rss, "server_5xx": s5xx,
            "statuses": dict(Counter(str(s) for _, s, _ in chunk))}


def _row(w: dict) -> str:
    return (f"window {w['window']}: {w['good']} good, p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, "
            f"statuses {w['statuses']}, server 5xx {w['server_5xx']}, RSS {w['rss_mb']:.0f} MB "
            f"(anonymous {w['anon_mb']:.0f}, file {w['file_mb']:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--load", type=float, default=0.7, help="share of the measured capacity")
    ap.add_argument("--window-s", type=float, default=300)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--malloc-arena-max", type=int, default=None,
                    help="run the server with glibc's MALLOC_ARENA_MAX=N (fewer per-thread heaps)")
    ap.add_argument("--max-rss-growth", type=float, default=0.05,
                    help="RSS growth after the first window allowed for PASS (short runs are still warming up)")
    args = ap.parse_args()
    env = dict(os.environ, **({"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else {}))
    with ServeProcess(args.checkpoint, capture=False, env=env) as server:
        out = soak(server.url, server.proc.pid, args.minutes * 60, args.load, args.window_s)
    print(json.dumps({k: v for k, v in out.items() if k != "windows"}))
    print("| window | good requests | p50 ms | p99 ms | statuses | server 5xx | RSS MB | anonymous MB | file MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in out["windows"]:
        print(f"| {w['window']} | {w['good']} | {w['p50_ms']:.1f} | {w['p99_ms']:.1f} | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(w['statuses'].items()))} | {w['server_5xx']} | "
              f"{w['rss_mb']:.0f} | {w['anon_mb']:.0f} | {w['file_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    ok = out["client_5xx"] == 0 and out["server_5xx"] == 0 and out["rss_growth"] <= args.max_rss_growth
    print(f"{'PASS' if ok else 'FAIL'}: client 5xx {out['client_5xx']}, server 5xx {out['server_5xx']}, "
          f"RSS growth after warm-up {100 * out['rss_growth']:+.1f} %")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
