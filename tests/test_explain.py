"""Grad-CAM explanations in Python, the CLI, the API and their refusals."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("captum")

import resnetlab  # noqa: E402
from conftest import SGD_DEFAULT  # noqa: E402
from resnetlab.cli import main  # noqa: E402

QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]


def _patch_image(rng: np.random.Generator, quadrant: int, size: int = 64, patch: int = 10
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Dark noise with one bright patch somewhere inside the given quadrant (at least 4 px from its edges);
    returns the image and the patch's centre (row, column)."""
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    half = size // 2
    r0 = rng.integers(4, half - patch - 3) + (half if quadrant >= 2 else 0)
    c0 = rng.integers(4, half - patch - 3) + (half if quadrant % 2 else 0)
    img[r0:r0 + patch, c0:c0 + patch] = 255
    return img, (r0 + patch // 2, c0 + patch // 2)


@pytest.fixture(scope="module")
def position_model(tmp_path_factory):
    """A small ResNet-9 trained (6 epochs, 64 px) to tell in which quadrant the bright patch is, and held-out
    images with their patch's centre."""
    root = tmp_path_factory.mktemp("quadrants")
    rng = np.random.default_rng(0)
    for q, name in enumerate(QUADRANTS):
        (root / "data" / name).mkdir(parents=True)
        for i in range(120):
            Image.fromarray(_patch_image(rng, q)[0]).save(root / "data" / name / f"{i:03d}.png")
    results = resnetlab.train(SGD_DEFAULT, root / "run", overrides={
        "model.name": "resnet9_small", "model.kwargs": {}, "data.dataset": "folder", "data.path": str(root / "data"),
        "data.image_size": 64, "data.val_size": 0, "data.augment.crop_padding": 0, "data.augment.flip": False,
        "data.augment.cutout": 0, "train.epochs": 6, "train.batch_size": 32, "optim.lr": 0.05,
        "train.precision": "fp32", "train.tta": False, "train.ema_decay": 0}, log=lambda *a: None)
    held = [_patch_image(np.random.default_rng(1000 + i), i % 4) for i in range(80)]
    return root / "run" / "best.safetensors", held, results


def test_heat_map_falls_on_the_patch_that_decides_the_class(position_model):
    ckpt, held, results = position_model
    assert results["test"]["top1"] > 0.5, results["test"]  # well above chance (0.25): it learned the patch
    clf = resnetlab.load(ckpt, device="cpu")
    ex = clf.explain([img for img, _ in held])
    hits = 0
    for e, (img, (r, c)) in zip(ex, held):
        assert e.heatmap.shape == img.shape[:2] and e.heatmap.dtype == np.float32
        assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0
        y, x = np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)
        hits += (y >= 32) == (r >= 32) and (x >= 32) == (c >= 32)
        assert e.overlay.size == (img.shape[1], img.shape[0])
    assert hits / len(held) >= 0.9, f"heat map maximum in the patch's quadrant for {hits} of {len(held)}"


def test_a_batch_is_explained_as_its_images_one_by_one(position_model):
    ckpt, held, _ = position_model
    clf = resnetlab.load(ckpt, device="cpu", batch_size=8)
    imgs = [img for img, _ in held[:6]]
    together = clf.explain(imgs, target="top-right")
    for img, e in zip(imgs, together):
        alone = clf.explain(img, target=clf.classes.index("top-right"))[0]  # by index
        assert alone.label == e.label == "top-right"
        np.testing.assert_allclose(alone.heatmap, e.heatmap, atol=1e-4)
    with pytest.raises(resnetlab.errors.UserError, match="not one of the model's classes"):
        clf.explain(imgs[0], target="middle")


def test_predict_explain_writes_overlays(position_model, tmp_path, capsys):
    ckpt, held, _ = position_model
    for d in ("a", "b"):  # the same file name in two folders: two overlays
        (tmp_path / d).mkdir()
        Image.fromarray(held[0][0]).resize((96, 64)).save(tmp_path / d / "same.png")
    assert main(["predict", str(ckpt), str(tmp_path / "a"), str(tmp_path / "b"), "--explain", str(tmp_path / "cams"),
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    files = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert files == ["same-2.cam.png", "same.cam.png"]
    assert all(Path(r["explanation"]["file"]).is_file() for r in rows)
    assert Image.open(tmp_path / "cams" / "same.cam.png").size == (96, 64)  # the image's own size


def test_explain_endpoint_same_rules_as_predict(position_model, tmp_path):
    from conftest import ready_client
    from resnetlab.serving.app import create_app
    from resnetlab.serving.settings import ServeSettings
    ckpt, held, _ = position_model
    buf = io.BytesIO()
    Image.fromarray(held[1][0]).save(buf, "PNG")
    key = tmp_path / "keys"
    key.write_text("s3cret\n")
    client = ready_client(create_app(resnetlab.load(ckpt, device="cpu"), ServeSettings(api_key_file=str(key))), "http://127.0.0.1")
    try:
        assert client.post("/v1/explain", files={"f": ("x.png", buf.getvalue(), "image/png")}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        r = client.post("/v1/explain?top_k=2", files={"f": ("x.png", buf.getvalue(), "image/png")}, headers=auth)
        assert r.status_code == 200, r.text
        e = r.json()["explanations"][0]
        assert e["file"] == "x.png" and len(e["top"]) == 2 and e["explained"]["class"] == e["top"][0]["class"]
        png = Image.open(io.BytesIO(base64.b64decode(e["overlay_png"])))
        assert png.size == (64, 64) and png.mode == "RGB"
        r = client.post("/v1/explain?target=middle", files={"f": ("x.png", buf.getvalue(), "image/png")}, headers=auth)
        assert r.status_code == 400 and "not one of the model's classes" in r.json()["detail"]
        r = client.post("/v1/explain", content=b"not an image", headers=dict(auth, **{"Content-Type": "image/png"}))
        assert r.status_code == 415
        r = client.post("/v1/explain?target=%C2%B2", files={"f": ("x.png", buf.getvalue(), "image/png")}, headers=auth)
        assert r.status_code == 400 and "not one of the model's classes" in r.json()["detail"]  # '²' is no index
        metrics = client.get("/metrics", headers=auth).text  # counted under its own route, from the router
        from conftest import metric
        assert metric(metrics, "resnetlab_requests_total", route="/v1/explain", status="200") == 1
        assert metric(metrics, "resnetlab_requests_total", route="/v1/explain", status="401") == 1
        assert 'route="other"' not in metrics
    finally:
        client.__exit__(None, None, None)


def test_onnx_backend_answers_explain_with_501(position_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import ready_client
    from resnetlab.serving.app import create_app
    from resnetlab.serving.settings import ServeSettings
    ckpt, held, _ = position_model
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    client = ready_client(create_app(resnetlab.load(tmp_path / "m.onnx"), ServeSettings(no_auth=True)), "http://127.0.0.1")
    try:
        buf = io.BytesIO()
        Image.fromarray(held[0][0]).save(buf, "PNG")
        r = client.post("/v1/explain", files={"f": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 501 and "PyTorch model" in r.json()["detail"]
    finally:
        client.__exit__(None, None, None)
    with pytest.raises(resnetlab.errors.UserError, match="explanations need the PyTorch model"):
        resnetlab.load(tmp_path / "m.onnx").explain(held[0][0])


def test_explain_has_its_own_smaller_pixel_budget_and_counts_as_work(position_model):
    from conftest import ready_client
    from resnetlab.serving.app import create_app
    from resnetlab.serving.settings import ServeSettings
    ckpt, held, _ = position_model
    buf = io.BytesIO()
    Image.fromarray(held[1][0]).save(buf, "PNG")  # 64x64 = 4,096 pixels
    settings = ServeSettings(no_auth=True, explain_max_pixels=4000)
    client = ready_client(create_app(resnetlab.load(ckpt, device="cpu"), settings), "http://127.0.0.1")
    try:
        svc = client.app.state.service
        before = svc.metrics.work_seen
        r = client.post("/v1/explain", files={"f": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 413 and "over the limit of 4,000" in r.json()["detail"]
        assert svc.metrics.work_seen > before  # an explain request holds off the idle-time memory trim
        assert client.post("/v1/predict", files={"f": ("x.png", buf.getvalue(), "image/png")}).status_code == 200
        assert client.get("/v1/model").json()["limits"]["explain_max_pixels"] == 4000
    finally:
        client.__exit__(None, None, None)
