"""Prometheus text exposition (format 0.0.4), written by hand: three metric kinds, no dependency."""
from __future__ import annotations

import threading
import time
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    """Request counts by route and status, request latency by route, images and batch sizes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.images = 0
        self.in_flight = 0
        self.work_in_flight = 0  # /v1/ requests being handled now
        self.work_seen = 0.0  # time.monotonic() when a /v1/ request last began or ended

    def work_begins(self) -> None:
        self.work_in_flight += 1
        self.work_seen = time.monotonic()

    def work_ends(self) -> None:
        self.work_in_flight -= 1
        self.work_seen = time.monotonic()

    def quiet_for(self, seconds: float) -> bool:
        """No /v1/ request in flight, and none began or ended in the last `seconds`."""
        return self.work_in_flight == 0 and time.monotonic() - self.work_seen >= seconds

    def request_done(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch_done(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)
            self.images += size

    def render(self) -> str:
        with self._lock:
            out = ["# HELP resnetlab_requests_total HTTP requests answered, by route and status code.",
                   "# TYPE resnetlab_requests_total counter"]
            out += [f'resnetlab_requests_total{{route="{r}",status="{s}"}} {n}'
                    for (r, s), n in sorted(self.requests.items())]
            out += ["# HELP resnetlab_request_duration_seconds Time from request to response, by route.",
                    "# TYPE resnetlab_request_duration_seconds histogram"]
            for route, h in sorted(self.latency.items()):
                out += h.lines("resnetlab_request_duration_seconds", f'route="{route}"')
            out += ["# HELP resnetlab_batch_size Images per forward pass (dynamic batching).",
                    "# TYPE resnetlab_batch_size histogram"]
            out += self.batches.lines("resnetlab_batch_size")
            out += ["# HELP resnetlab_images_total Images classified.", "# TYPE resnetlab_images_total counter",
                    f"resnetlab_images_total {self.images}",
                    "# HELP resnetlab_requests_in_flight Requests being handled now.",
                    "# TYPE resnetlab_requests_in_flight gauge", f"resnetlab_requests_in_flight {self.in_flight}"]
            return "\n".join(out) + "\n"
