"""Shared fixtures: tiny synthetic data in the official CIFAR formats and as image folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The one-cycle SGD default recipe, pinned when the default moved to Muon: tests whose tolerances, figures or
# learning behaviour were measured on it train with it, whatever the bundled default is now.
SGD_DEFAULT = str(Path(__file__).resolve().parents[1] / "benchmarks" / "recipes" / "cifar10_quick_v2.yaml")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_images(n: int, num_classes: int = 10, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class has its own mean colour and a stripe, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    palette = np.random.default_rng(1234).integers(30, 225, size=(num_classes, 3))
    imgs = rng.normal(0, 25, size=(n, 3, size, size)) + palette[labels][:, :, None, None]
    for i, c in enumerate(labels):
        imgs[i, :, (c * 3) % size: (c * 3) % size + 3, :] = 250
    return np.clip(imgs, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_cifar10_bin(root: Path, per_file: int = 40, seed: int = 0) -> Path:
    from resnetlab.testing import write_cifar10_binary
    parts = [synthetic_images(per_file, seed=seed + k) for k in range(6)]  # one seed per official file
    train = (np.concatenate([x for x, _ in parts[:5]]), np.concatenate([y for _, y in parts[:5]]))
    return write_cifar10_binary(root, train, parts[5], CLASSES)


@pytest.fixture(autouse=True)
def decoded_cache(tmp_path_factory, monkeypatch) -> Path:
    """Decoded caches of the session's test folders go to one temporary folder, never the user's cache."""
    root = tmp_path_factory.getbasetemp() / "resnetlab-cache"
    monkeypatch.setenv("RESNETLAB_CACHE", str(root))
    return root


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Path:
    """A data root holding a synthetic cifar-10-batches-bin (200 train, 40 test images)."""
    write_cifar10_bin(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    x, y = synthetic_images(60, num_classes=3, seed=5)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"class_{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The bundled CIFAR-10 (RESNETLAB_DATA). .ci/run always sets it; locally we fall back to ../shared."""
    env = os.environ.get("RESNETLAB_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (path / "cifar-10-batches-bin").is_dir():
        if env:  # CI sets it: missing data there must fail, never skip
            pytest.fail(f"RESNETLAB_DATA={env} has no cifar-10-batches-bin")
        pytest.skip("bundled CIFAR-10 not found; set RESNETLAB_DATA")
    return path


class RangeServer:
    """A loopback HTTP server for download tests: serves files with Range support (206 / 416), and can
    announce a Content-Length it does not deliver (a transfer that ends early)."""

    def __init__(self, files: dict[str, bytes], cut_after: int | None = None) -> None:
        import http.server
        import threading
        server_self = self
        self.files, self.cut_after, self.requests = files, cut_after, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server_self.requests.append((self.path, self.headers.get("Range")))
                body = server_self.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server_self.cut_after is not None:
                    part = part[: server_self.cut_after]
                self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve_files():
    servers = []

    def start(files: dict[str, bytes], cut_after: int | None = None) -> RangeServer:
        s = RangeServer(files, cut_after)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def small_checkpoint(real_data, tmp_path_factory) -> Path:
    """A small resnet20 trained for one epoch on 2,000 real CIFAR-10 images (fp32): a checkpoint with
    its data recorded, for the export and serving tests. Trained once per session."""
    from resnetlab.cli import main
    out = tmp_path_factory.mktemp("small") / "run"
    assert main(["train", "--data-dir", str(real_data), "--out", str(out), "--no-progress", "model.name=resnet20",
                 "data.subset=2000", "data.val_size=0", "train.epochs=1", "train.batch_size=64",
                 "train.precision=fp32", "train.tta=false"]) == 0
    return out / "best.safetensors"


def png_bytes(pixels: np.ndarray) -> bytes:
    """HWC uint8 → PNG file bytes."""
    import io
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of a Prometheus sample in /metrics text, summed over the series whose labels include `labels`
    (parsed by prometheus_client's own parser); AssertionError when no series matches."""
    from prometheus_client.parser import text_string_to_metric_families
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if not found:
        raise AssertionError(f"no sample {name}{labels} in the metrics")
    return sum(found)


def ready_client(app, base_url: str = "http://testserver"):
    """A TestClient of a serving app, started (batcher, warm-up) and ready: /readyz answered 200."""
    import time

    from fastapi.testclient import TestClient
    client = TestClient(app, base_url=base_url)
    client.__enter__()
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError("service never became ready")


def headless_chromium(tmp_path):
    """A headless Debian chromium driven by selenium (phone-sized window), or a skip where it is not installed
    (.ci/run installs it; RESNETLAB_REQUIRE_BROWSER makes its absence a failure)."""
    import shutil
    if not (shutil.which("chromium") and shutil.which("chromedriver")) and not os.environ.get("RESNETLAB_REQUIRE_BROWSER"):
        pytest.skip("Debian chromium + chromium-driver not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=390,844"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
