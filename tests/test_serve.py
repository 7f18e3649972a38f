"""`resnetlab serve`: the HTTP API tested with httpx against the real app, the batcher, and a real
server process driven by a headless Chromium, a loopback load and a SIGTERM."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import headless_chromium, metric, png_bytes, ready_client
from resnetlab import load
from resnetlab.data.cifar import load_cifar
from resnetlab.serving.app import create_app
from resnetlab.serving.settings import ServeSettings, pass_sizes
from resnetlab.serving.batcher import DynamicBatcher
from resnetlab.testing import ServeProcess as Server


@pytest.fixture(scope="module")
def images(real_data) -> list[bytes]:
    test = load_cifar(real_data, "cifar10", "test")
    return [png_bytes(test.images[i].permute(1, 2, 0).numpy()) for i in range(40)]


@pytest.fixture(scope="module")
def classifier(small_checkpoint):
    return load(small_checkpoint, device="cpu")


def client_for(clf, **settings) -> TestClient:
    settings.setdefault("allowed_hosts", ["testserver"])  # the Host header TestClient sends
    return ready_client(create_app(clf, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def client(classifier):
    c = client_for(classifier, max_files=8, max_body_mb=1.0, max_pixels=1_000_000)
    yield c
    c.__exit__(None, None, None)


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_health_ready_model_docs(client, classifier):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    card = client.get("/v1/model").json()
    assert card["arch"] == "resnet20" and card["classes"] == classifier.classes and card["input_size"] == 32
    assert card["params"] == sum(p.numel() for p in classifier.model.parameters())
    assert 0 < card["metrics"]["test"]["top1"] <= 1 and card["limits"]["max_files"] == 8
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "<input id=\"file\"" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets


def test_predict_multipart_and_raw_match_the_python_api(client, classifier, images, tmp_path):
    files = [("files", (f"{i}.png", images[i], "image/png")) for i in range(5)]
    r = client.post("/v1/predict", files=files, params={"top_k": 3})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(images[i])
    expected = classifier.predict([tmp_path / f"{i}.png" for i in range(5)], top_k=3)
    assert [p["file"] for p in preds] == [f"{i}.png" for i in range(5)]
    for got, want in zip(preds, expected):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(got["top"], want["top"]))
    raw = client.post("/v1/predict", content=images[0], headers={"content-type": "image/png"})
    assert raw.status_code == 200
    top = raw.json()["predictions"][0]["top"]
    assert top[0]["class"] == preds[0]["top"][0]["class"] and len(top) == 5  # default top_k


def test_bad_inputs_get_4xx_with_a_reason(client, images):
    big = np.zeros((1200, 1200, 3), np.uint8)  # 1.44 MP, a few KB as PNG: over max_pixels, not the body limit
    cases = {
        "over the body limit": (dict(content=b"\x89PNG" + b"0" * 1_100_000), 413, "over the limit"),
        "not an image": (dict(files=[("f", ("notes.txt", b"hello, not an image", "text/plain"))]), 415,
                         "notes.txt: not an image"),
        "truncated PNG": (dict(files=[("f", ("cut.png", images[0][:200], "image/png"))]), 400,
                          "cut.png: cannot decode image"),
        "truncated JPEG": (dict(content=_jpeg(np.full((64, 64, 3), 90, np.uint8))[:300]), 400, "cannot decode"),
        "too many files": (dict(files=[("f", (f"{i}.png", images[0], "image/png")) for i in range(9)]), 413,
                           "too many files"),
        "too many pixels": (dict(content=png_bytes(big)), 413, "image too large"),
        "empty body": (dict(content=b""), 400, "no image in the request"),
        "empty file": (dict(files=[("f", ("e.png", b"", "image/png"))]), 400, "e.png: empty file"),
    }
    for name, (kwargs, status, reason) in cases.items():
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert reason in r.json()["detail"], (name, r.json())
    for bad in ("0", "-1", "two"):
        r = client.post("/v1/predict", content=images[0], params={"top_k": bad})
        assert r.status_code == 400 and "top_k" in r.json()["detail"]
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/v1/predict").status_code == 405
    assert client.get("/healthz").status_code == 200  # still fine afterwards


def test_metrics_count_requests_latency_and_batches(client, images):
    client.post("/v1/predict", content=images[1])
    text = client.get("/metrics").text
    served = {"model": "run", "version": "1"}  # the run folder names the model; one checkpoint is version 1
    assert metric(text, "resnetlab_requests_total", route="/v1/predict", status="200", **served) >= 1
    assert metric(text, "resnetlab_request_duration_seconds_bucket", route="/v1/predict", le="+Inf", **served) >= 1
    assert metric(text, "resnetlab_queue_seconds_count", **served) >= 1
    assert metric(text, "resnetlab_batch_size_count", **served) >= 1 and "# TYPE resnetlab_batch_size histogram" in text
    assert metric(text, "resnetlab_images_total", **served) >= 1
    assert metric(text, "resnetlab_model_version_serving", **served) == 1


def test_batcher_groups_concurrent_requests_and_bounds_the_batch():
    sizes: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(1, 2, 3))[:, None] + torch.zeros(len(x), 2)

    async def scenario():
        b = DynamicBatcher(run, max_batch=8, max_wait_ms=200, on_batch=sizes.append)
        await b.start()
        jobs = [torch.full((1, 3, 4, 4), i, dtype=torch.uint8) for i in range(12)]
        results = await asyncio.gather(*(b.submit(j) for j in jobs))
        big = await b.submit(torch.zeros(19, 3, 4, 4, dtype=torch.uint8))  # one request over max_batch
        await b.stop()
        return results, big

    results, big = asyncio.run(scenario())
    assert [float(r[0, 0]) for r in results] == list(range(12))  # each request got its own answer
    assert sizes[:2] == [8, 4]  # 12 concurrent single-image requests: two forward passes, not twelve
    assert sizes[2:] == [8, 8, 3] and big.shape == (19, 2)


def test_pass_sizes_are_powers_of_two_to_8_then_multiples_of_8_up_to_max_batch():
    assert pass_sizes(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    assert pass_sizes(10) == (1, 2, 4, 8, 10) and pass_sizes(3) == (1, 2, 3) and pass_sizes(1) == (1,)


def test_batcher_pads_each_pass_to_the_next_pass_size_and_answers_each_request_with_its_own_rows():
    shapes: list[int] = []
    counted: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        shapes.append(len(x))
        return x.float().mean(dim=(1, 2, 3))[:, None] + torch.zeros(len(x), 2)

    async def scenario():
        b = DynamicBatcher(run, max_batch=16, max_wait_ms=200, on_batch=counted.append, sizes=pass_sizes(16))
        await b.start()
        jobs = [torch.full((1, 3, 4, 4), i + 1, dtype=torch.uint8) for i in range(5)]
        results = await asyncio.gather(*(b.submit(j) for j in jobs))
        three = await b.submit(torch.full((3, 3, 4, 4), 7, dtype=torch.uint8))
        big = await b.submit(torch.full((19, 3, 4, 4), 9, dtype=torch.uint8))  # over max_batch: 16 + 3
        await b.stop()
        return results, three, big

    results, three, big = asyncio.run(scenario())
    assert [float(r[0, 0]) for r in results] == [1, 2, 3, 4, 5] and all(r.shape == (1, 2) for r in results)
    assert three.shape == (3, 2) and (three[:, 0] == 7).all()
    assert big.shape == (19, 2) and (big[:, 0] == 9).all()
    assert counted == [5, 3, 16, 3]  # the metrics count real images
    assert shapes == [8, 4, 16, 4]  # the model saw pass sizes only (5 → 8, 3 → 4)


def test_warm_up_runs_every_pass_size_before_ready(classifier):
    from resnetlab.serving.hub import ModelHub
    from resnetlab.serving.metrics import Metrics

    for exact, want in ((False, [1, 2, 4, 8, 12]), (True, [1, 12])):
        hub = ModelHub.of_classifier(classifier, ServeSettings(max_batch=12, exact_batches=exact), Metrics())
        sv = hub.models[hub.default_model].versions[1]
        seen: list[int] = []
        run = sv.run
        sv.run = lambda batch: (seen.append(len(batch)), run(batch))[1]

        async def start_and_stop() -> bool:
            assert not hub.ready
            await hub.start()
            ready = hub.ready
            await hub.stop()
            return ready

        assert asyncio.run(start_and_stop()) and seen == want


def test_batcher_stop_answers_what_was_queued():
    async def scenario():
        b = DynamicBatcher(lambda x: torch.zeros(len(x), 1), max_batch=4, max_wait_ms=1000)
        await b.start()
        pending = [asyncio.ensure_future(b.submit(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))) for _ in range(6)]
        await asyncio.sleep(0.05)
        await b.stop()
        return [p.result().shape for p in pending]

    assert asyncio.run(scenario()) == [(1, 1)] * 6


# --- a real server process -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(small_checkpoint):
    s = Server(small_checkpoint)
    yield s
    s.stop()


def test_cli_serve_binds_loopback_and_refuses_a_busy_port(server, small_checkpoint):
    r = subprocess.run([sys.executable, "-m", "resnetlab", "serve", str(small_checkpoint), "--port", str(server.port)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{server.port}" in r.stderr
    # only loopback: the kernel's table of listening TCP sockets shows the port bound to 127.0.0.1 alone
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    bound = [f[1].split(":")[0] for f in listening if f[3] == "0A" and int(f[1].split(":")[1], 16) == server.port]
    assert bound == ["0100007F"]  # 127.0.0.1, little-endian hex; not 00000000 (every address)


def test_load_on_loopback_no_5xx(server, images):
    """64 concurrent clients × 10 requests, mixing good, not-an-image and truncated uploads."""
    bad = [(b"definitely not an image", 415), (images[0][:150], 400)]
    statuses: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for j in range(10):
                if (k + j) % 4 == 3:
                    body, want = bad[(k + j) % 2]
                else:
                    body, want = images[(k * 10 + j) % len(images)], 200
                try:
                    r = c.post("/v1/predict", files={"file": ("x.png", body, "image/png")})
                    ok = r.status_code == want
                except httpx.HTTPError as e:
                    ok, r = False, None
                    errors.append(repr(e))
                with lock:
                    statuses.append(r.status_code if r is not None else -1)
                    if not ok:
                        errors.append(f"client {k} request {j}: {r.status_code if r else '-'}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 640 and not errors, errors[:5]
    assert not [s for s in statuses if s >= 500]
    assert httpx.get(server.url + "/healthz").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    images_done = metric(metrics, "resnetlab_images_total")
    n_batches = metric(metrics, "resnetlab_batch_size_count")
    assert images_done >= 480 and n_batches < images_done  # concurrent requests shared forward passes


def test_sigterm_answers_requests_in_flight(small_checkpoint, images):
    s = Server(small_checkpoint, "--max-wait-ms", "1500")  # requests sit in the batcher for 1.5 s
    results: list[int] = []

    def post() -> None:
        r = httpx.post(s.url + "/v1/predict", content=images[2], timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    code, out = s.stop()
    for t in threads:
        t.join()
    # uvicorn re-raises the signal once it has shut down cleanly: "terminated by SIGTERM", not a crash
    assert results == [200] * 4 and code in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out


def test_page_classifies_an_upload_in_headless_chromium(server, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium(tmp_path)
    try:
        good, bad = tmp_path / "cat.png", tmp_path / "notes.png"
        good.write_bytes(images[3])
        bad.write_bytes(b"this is text with an image name")
        driver.get(server.url + "/")
        WebDriverWait(driver, 20).until(lambda d: "resnet20" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(f"{good}\n{bad}")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card .top1")
                                        and d.find_elements(By.CSS_SELECTOR, ".card .error"))
        top1 = driver.find_element(By.CSS_SELECTOR, ".card[data-top1]").get_attribute("data-top1")
        bars = driver.find_elements(By.CSS_SELECTOR, ".card[data-top1] .bar")
        error = driver.find_element(By.CSS_SELECTOR, ".card .error").text
        # the heat-map toggle: the classified card's thumbnail becomes its Grad-CAM overlay (from /v1/explain)
        driver.find_element(By.ID, "cam").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".card[data-top1] img")
                                        .get_attribute("src").startswith("data:image/png;base64,"))
        heat_note = driver.find_element(By.CSS_SELECTOR, ".card[data-top1] .note").text
        driver.save_screenshot(str(tmp_path / "page-phone.png"))
        driver.set_window_size(1280, 900)
        driver.save_screenshot(str(tmp_path / "page-desktop.png"))
        width = driver.execute_script("return document.documentElement.scrollWidth")
    finally:
        driver.quit()
    api = httpx.post(server.url + "/v1/predict", content=images[3]).json()
    assert top1 == api["predictions"][0]["top"][0]["class"]
    assert len(bars) == 5
    assert "Rejected" in error and "not an image" in error
    assert heat_note == f"heat map for {top1}"
    assert (tmp_path / "page-phone.png").stat().st_size > 1000 and width <= 1280
    if os.environ.get("RESNETLAB_SCREENSHOTS"):  # keep them for a person to look at
        for name in ("page-phone.png", "page-desktop.png"):
            shutil.copy(tmp_path / name, Path(os.environ["RESNETLAB_SCREENSHOTS"]) / name)


def test_onnx_backend_serves_what_the_torch_backend_does(small_checkpoint, classifier, images, tmp_path):
    from resnetlab.cli import main
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(small_checkpoint), "--out", str(onnx_file), "--check-count", "50"]) == 0
    c = client_for(load(onnx_file))
    try:
        card = c.get("/v1/model").json()
        r = c.post("/v1/predict", files=[("f", (f"{i}.png", images[i], "image/png")) for i in range(6)]).json()
    finally:
        c.__exit__(None, None, None)
    assert card["backend"] == "onnx" and card["classes"] == classifier.classes
    want = classifier.predict([Image.open(io.BytesIO(images[i])) for i in range(6)])
    assert [p["top"][0]["class"] for p in r["predictions"]] == [w["top"][0]["class"] for w in want]


def test_serve_refuses_onnx_backend_without_an_export(small_checkpoint, capsys):
    from resnetlab.cli import main
    assert main(["serve", str(small_checkpoint), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `resnetlab export" in err
    assert main(["serve", str(small_checkpoint), "--max-batch", "0"]) == 2
    assert "max-batch = 0 is out of range" in capsys.readouterr().err


def test_listening_socket_is_tcp_so_connections_get_nodelay():
    # asyncio sets TCP_NODELAY on accepted connections only for sockets created with proto=IPPROTO_TCP;
    # without it every keep-alive response waited ~40 ms for a delayed ACK
    from resnetlab.serving.server import bind
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
