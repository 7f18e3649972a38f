"""How long a real `resnetlab serve` keeps /healthz waiting while it decodes large images that are inside its
pixel budgets (decoded in a worker thread, off the event loop). Per repetition: one request of N lossless
WebPs of SIDE x SIDE pixels (34 bytes each), /healthz polled every 50 ms on one kept-alive connection while
it is in flight; printed: the request's time, the polls answered, their median and slowest. First a row with
no request in flight, for the host's own noise. Loopback only.

    python benchmarks/loop_stall.py CKPT [--reps 12] [--images 2] [--side 6300]
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx

from resnetlab.testing import ServeProcess, webp_bomb


def poll_while(poller: httpx.Client, url: str, busy) -> list[float]:
    polls = []
    while busy():
        t0 = time.perf_counter()
        poller.get(url + "/healthz").raise_for_status()
        polls.append(time.perf_counter() - t0)
        time.sleep(0.05)
    return polls


def row(label: str, request_s: float | None, polls: list[float]) -> str:
    req = f"{request_s:6.2f}" if request_s is not None else "     -"
    return (f"{label:>8} | {req} | {len(polls):5d} | {1000 * statistics.median(polls):7.1f} | "
            f"{1000 * max(polls):7.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--side", type=int, default=6300)
    a = p.parse_args()
    body = webp_bomb(a.side)
    print(f"{a.images} x {a.side}x{a.side} lossless WebP ({len(body)} bytes each, "
          f"{a.images * a.side * a.side / 1e6:.1f} MP per request)")
    print("     rep | request s | polls | median ms | max ms")
    with ServeProcess(a.checkpoint) as server, httpx.Client(timeout=30) as poller:
        until = time.perf_counter() + 2.0
        print(row("idle", None, poll_while(poller, server.url, lambda: time.perf_counter() < until)))
        slowest = []
        for rep in range(a.reps):
            result = {}

            def post():
                files = {f"f{i}": (f"b{i}.webp", body, "image/webp") for i in range(a.images)}
                t0 = time.perf_counter()
                r = httpx.post(server.url + "/v1/predict", files=files, timeout=120)
                result.update(status=r.status_code, seconds=time.perf_counter() - t0)
            t = threading.Thread(target=post)
            t.start()
            time.sleep(0.1)
            polls = poll_while(poller, server.url, t.is_alive)
            t.join()
            if result["status"] != 200:
                raise SystemExit(f"the request was answered {result['status']}, not 200")
            print(row(str(rep + 1), result["seconds"], polls or [float("nan")]))
            slowest.append(max(polls or [0.0]))
            time.sleep(0.5)
    print(f"slowest poll over {a.reps} requests: median {1000 * statistics.median(slowest):.0f} ms, "
          f"max {1000 * max(slowest):.0f} ms")


if __name__ == "__main__":
    main()
