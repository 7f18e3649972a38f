"""The service's Prometheus metrics, kept by prometheus_client in a registry of the app's own (two apps in one
process, as the tests make, do not share counts). Labelled by route and status, and by the model and version that
answered; plus the quiet-spell clock the memory trim waits for."""
from __future__ import annotations

import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

prometheus_client.disable_created_metrics()  # no *_created series: they double the output and nobody graphs them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
SERVED = "resnetlab.served"  # ASGI scope key: (model, version) that answered the request, set by its route


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("resnetlab_requests", "HTTP requests answered, by route, status code, and the model "
                                "and version that answered (empty for routes without a model).",
                                ("route", "status", "model", "version"), registry=r)
        self.latency = Histogram("resnetlab_request_duration_seconds", "Time from request to response.",
                                 ("route", "model", "version"), buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("resnetlab_queue_seconds", "Time a request's images waited in their model's batcher "
                               "before their forward pass began.", ("model", "version"), buckets=QUEUE_BUCKETS,
                               registry=r)
        self.batches = Histogram("resnetlab_batch_size", "Images per forward pass (dynamic batching).",
                                 ("model", "version"), buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("resnetlab_images", "Images classified.", ("model", "version"), registry=r)
        self.in_flight_gauge = Gauge("resnetlab_requests_in_flight", "Requests being handled now.", registry=r)
        self.loads = Counter("resnetlab_model_loads", "Versions loaded (result ok) or refused (result failed: did "
                             "not open, or failed its self-check).", ("model", "version", "result"), registry=r)
        self.serving_gauge = Gauge("resnetlab_model_version_serving", "1 for each version serving now.",
                                   ("model", "version"), registry=r)
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

    def request_begins(self) -> None:
        self.in_flight += 1
        self.in_flight_gauge.inc()

    def request_done(self, route: str, status: int, seconds: float, model: str = "", version: str = "") -> None:
        self.in_flight -= 1
        self.in_flight_gauge.dec()
        self.requests.labels(route, str(status), model, version).inc()
        self.latency.labels(route, model, version).observe(seconds)

    def batch_done(self, model: str, version: str, size: int) -> None:
        self.batches.labels(model, version).observe(size)
        self.images.labels(model, version).inc(size)

    def queued(self, model: str, version: str, seconds: float) -> None:
        self.queue.labels(model, version).observe(seconds)

    def version_loaded(self, model: str, version: int, ok: bool) -> None:
        self.loads.labels(model, str(version), "ok" if ok else "failed").inc()

    def serving(self, model: str, version: int, on: bool) -> None:
        if on:
            self.serving_gauge.labels(model, str(version)).set(1)
        else:
            try:
                self.serving_gauge.remove(model, str(version))
            except KeyError:
                pass

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
