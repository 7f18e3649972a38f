"""`resnetlab serve --models DIR`: a repository of models and versions, the management API (its own key), swaps
that never drop or move a request, broken versions that leave the old one serving, models taking turns on the
cores, metrics by model and version, and polling a real server's folder."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import pytest
import torch

from conftest import metric, png_bytes, ready_client
from resnetlab.data.cifar import load_cifar
from resnetlab.serving.app import create_app
from resnetlab.serving.batcher import DynamicBatcher
from resnetlab.serving.hub import ModelHub
from resnetlab.serving.metrics import Metrics
from resnetlab.serving.repository import FolderRepository, model_name_problem, read_config
from resnetlab.serving.settings import ServeSettings
from resnetlab.testing import ServeProcess
from resnetlab.weights import read_checkpoint, save_checkpoint
from resnetlab.errors import UserError

ADMIN = {"Authorization": "Bearer boss-key"}


@pytest.fixture(scope="module")
def image(real_data) -> bytes:
    return png_bytes(load_cifar(real_data, "cifar10", "test").images[3].permute(1, 2, 0).numpy())


def publish(ckpt: Path, root: Path, name: str, version: int, *, classes: list[str] | None = None,
            nan: bool = False, truncate: bool = False) -> Path:
    """A version folder as an operator publishes one: written under a hidden name, then renamed to its number.
    classes / nan / truncate make the three kinds of broken version."""
    staging = root / name / f".{version}.tmp"
    staging.mkdir(parents=True)
    target = staging / "model.safetensors"
    if classes is not None or nan:
        weights, meta = read_checkpoint(ckpt)
        if classes is not None:
            meta = dict(meta, classes=classes)
        if nan:
            weights = {k: (torch.full_like(v, float("nan")) if k.endswith("fc.weight") else v)
                       for k, v in weights.items()}
        save_checkpoint(target, weights, meta)
    elif truncate:
        target.write_bytes(ckpt.read_bytes()[:1000])
    else:
        shutil.copyfile(ckpt, target)
    final = root / name / str(version)
    staging.rename(final)
    return final


def hub_client(root: Path, **settings):
    settings.setdefault("allowed_hosts", ["testserver"])
    s = ServeSettings(**settings)
    hub = ModelHub(FolderRepository(root), s, Metrics(), log=lambda line: None)
    hub.preload()
    return ready_client(create_app(hub, s)), hub


def predict(client, image: bytes, path: str = "/v1/predict", **kw) -> httpx.Response:
    return client.post(path, files={"f": ("x.png", image, "image/png")}, **kw)


def test_a_repository_serves_each_model_and_version_and_its_default(small_checkpoint, image, tmp_path):
    for name, version in (("cats", 1), ("cats", 2), ("birds", 7)):
        publish(small_checkpoint, tmp_path, name, version)
    (tmp_path / "README").write_text("not a model")
    (tmp_path / ".hidden").mkdir()
    client, hub = hub_client(tmp_path, default_model="cats")
    try:
        listing = client.get("/v1/models").json()
        assert listing["default_model"] == "cats"
        assert {m["name"]: (m["versions"], m["default_version"]) for m in listing["models"]} == {
            "birds": ([7], 7), "cats": ([2], 2)}  # the highest version of each serves
        r = predict(client, image)
        assert r.status_code == 200 and (r.json()["name"], r.json()["version"]) == ("cats", 2)
        r = predict(client, image, "/v1/models/birds/predict")
        assert (r.json()["name"], r.json()["version"]) == ("birds", 7)
        same = predict(client, image, "/v1/models/birds/versions/7/predict").json()["predictions"]
        assert same == r.json()["predictions"]  # a copy of one checkpoint answers alike under every name
        card = client.get("/v1/models/cats/versions/2").json()
        assert (card["name"], card["version"], card["file"], card["num_classes"]) == ("cats", 2, "model.safetensors", 10)
        for path, status in (("/v1/models/dogs/predict", 404), ("/v1/models/cats/versions/1/predict", 404),
                             ("/v1/models/cats/versions/x/predict", 404), ("/v1/models/%2E%2E/predict", 404),
                             ("/v1/models/..%2F..%2Fetc/predict", 404), ("/v1/models/.hidden/predict", 404),
                             ("/v1/models/cats/versions/..%2F1/predict", 404)):
            r = predict(client, image, path)
            assert r.status_code == status and "\n" not in r.json()["detail"], (path, r.text)
        text = client.get("/metrics").text
        assert metric(text, "resnetlab_requests_total", route="/v1/models/{name}/predict", status="200",
                      model="birds", version="7") == 1
        assert metric(text, "resnetlab_images_total", model="cats", version="2") >= 1
        assert metric(text, "resnetlab_model_version_serving", model="birds", version="7") == 1
    finally:
        client.__exit__(None, None, None)


def test_model_names_that_could_leave_the_repository_are_refused():
    for bad in ("..", "../etc", "a/b", ".git", "a..b", "", "x" * 65, "name with space", "é"):
        assert model_name_problem(bad), bad
    for good in ("cats", "resnet-20_v1.onnx", "A1"):
        assert model_name_problem(good) is None


def test_broken_versions_leave_the_old_one_serving_and_say_why(small_checkpoint, image, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_ADMIN_KEY", "boss-key")
    publish(small_checkpoint, tmp_path, "cats", 1)
    client, hub = hub_client(tmp_path)
    try:
        broken = {2: (dict(truncate=True), "not a readable safetensors checkpoint"),
                  3: (dict(classes=[f"c{i}" for i in range(10)]), "class 0 is 'c0' where version 1 has 'airplane'"),
                  4: (dict(nan=True), "not finite")}
        for version, (how, why) in broken.items():
            publish(small_checkpoint, tmp_path, "cats", version, **how)
            r = client.post(f"/admin/models/cats/load?version={version}", headers=ADMIN)
            detail = r.json()["detail"]
            assert r.status_code == 422 and why in detail and "version 1 keeps serving" in detail, detail
            assert "\n" not in detail
            assert predict(client, image).json()["version"] == 1
        states = {v["version"]: v for v in client.get("/admin/models", headers=ADMIN).json()["models"][0]["versions"]}
        assert states[1]["state"] == "serving"
        assert all(states[v]["state"] == "failed" and why in states[v]["reason"] for v, (_, why) in broken.items())
        publish(small_checkpoint, tmp_path, "cats", 5)
        r = client.post("/admin/models/cats/load", headers=ADMIN)  # the latest: version 5
        assert r.status_code == 200 and r.json()["version"] == 5, r.text
        assert predict(client, image).json()["version"] == 5
        text = client.get("/metrics").text
        assert metric(text, "resnetlab_model_loads_total", model="cats", result="failed") == 3
        assert metric(text, "resnetlab_model_loads_total", model="cats", version="5", result="ok") == 1
        with pytest.raises(AssertionError):  # version 1 is released: no longer counted as serving
            metric(text, "resnetlab_model_version_serving", model="cats", version="1")
    finally:
        client.__exit__(None, None, None)


def test_the_management_api_needs_an_admin_key_that_no_user_key_replaces(small_checkpoint, image, tmp_path,
                                                                        monkeypatch):
    publish(small_checkpoint, tmp_path, "cats", 1)
    monkeypatch.delenv("RESNETLAB_ADMIN_KEY", raising=False)
    monkeypatch.setenv("RESNETLAB_API_KEY", "user-key")
    client, _ = hub_client(tmp_path)
    try:  # no admin key configured: the management API is off, in one line
        r = client.get("/admin/models", headers={"Authorization": "Bearer user-key"})
        assert r.status_code == 403 and "management API is off" in r.json()["detail"]
    finally:
        client.__exit__(None, None, None)
    admin_file = tmp_path / "admin-keys"
    admin_file.write_text("boss-key\n")
    client, _ = hub_client(tmp_path, admin_key_file=str(admin_file))
    try:
        assert client.get("/admin/models").status_code == 401
        assert client.get("/admin/models", headers={"Authorization": "Bearer user-key"}).status_code == 401
        assert client.get("/admin/models", headers=ADMIN).status_code == 200
        assert predict(client, image, headers=ADMIN).status_code == 401  # nor does the admin key open /v1/
        assert predict(client, image, headers={"X-API-Key": "user-key"}).status_code == 200
    finally:
        client.__exit__(None, None, None)
    with pytest.raises(UserError, match="admin key is also an API key"):
        ServeSettings(admin_key_file=str(admin_file), api_key_file=str(admin_file)).validate()


def test_unload_pin_and_load_by_name(small_checkpoint, image, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_ADMIN_KEY", "boss-key")
    for v in (1, 2):
        publish(small_checkpoint, tmp_path, "cats", v)
    client, _ = hub_client(tmp_path)
    try:
        r = client.post("/admin/models/cats/load?version=1", headers=ADMIN)  # kept beside the latest
        assert r.status_code == 200 and client.get("/v1/models").json()["models"][0]["versions"] == [1, 2]
        assert client.post("/admin/models/cats/default?version=1", headers=ADMIN).json()["default_version"] == 1
        assert predict(client, image).json()["version"] == 1
        assert predict(client, image, "/v1/models/cats/versions/2/predict").json()["version"] == 2
        assert client.post("/admin/models/cats/default?version=latest", headers=ADMIN).json()["default_version"] == 2
        r = client.post("/admin/models/cats/default?version=9", headers=ADMIN)
        assert r.status_code == 409 and "not loaded" in r.json()["detail"]
        for bad in ("/admin/models/cats/load?version=0", "/admin/models/cats/load?version=-1"):
            assert client.post(bad, headers=ADMIN).status_code == 400
        assert client.post("/admin/models/..%2Fx/load", headers=ADMIN).status_code == 404
        assert client.post("/admin/models/dogs/load", headers=ADMIN).status_code == 404
        r = client.post("/admin/models/cats/unload", headers=ADMIN)
        assert r.status_code == 200 and sorted(r.json()["unloaded"]) == [1, 2]
        r = predict(client, image)
        assert r.status_code == 503 and r.json()["detail"] == ("model 'cats' has no version loaded (unloaded by the "
                                                                "management API)")
        assert client.get("/readyz").status_code == 503  # nothing serves: a balancer sends traffic elsewhere
        assert client.post("/admin/models/cats/load", headers=ADMIN).json()["version"] == 2
        assert predict(client, image).json()["version"] == 2 and client.get("/readyz").status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_a_request_finishes_on_the_version_it_started_on_and_the_old_one_is_released_after_it(
        small_checkpoint, tmp_path):
    publish(small_checkpoint, tmp_path, "cats", 1)
    hub = ModelHub(FolderRepository(tmp_path), ServeSettings(), Metrics(), log=lambda line: None)
    hub.preload()

    async def scenario():
        await hub.start()
        old = hub.resolve("cats")
        model = weakref.ref(old.clf.model)
        with hub.hold(old):  # a request that began on version 1
            publish(small_checkpoint, tmp_path, "cats", 2)
            await hub.load("cats")
            assert hub.resolve("cats").version == 2  # new requests go to version 2 ...
            assert old.retired and not old.closed  # ... while this one still has version 1, alive
            logits = await old.batcher.submit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
            assert logits.shape == (1, 10)
        for _ in range(100):  # released after its last request: batcher stopped, model dropped
            if old.clf is None:
                break
            await asyncio.sleep(0.02)
        assert old.closed and old.clf is None and old.batcher is None
        assert model() is None  # its weights are freed, not merely unreferenced by the hub
        await hub.stop()

    asyncio.run(scenario())


def test_a_model_past_its_in_flight_limit_answers_503_and_its_config_is_checked(small_checkpoint, tmp_path):
    publish(small_checkpoint, tmp_path, "cats", 1)
    (tmp_path / "cats" / "config.yaml").write_text("max_in_flight: 1\nmax_batch: 8\n")
    hub = ModelHub(FolderRepository(tmp_path), ServeSettings(), Metrics(), log=lambda line: None)
    hub.preload()
    sv = hub.models["cats"].versions[1]
    from resnetlab.serving.hub import RequestError
    with hub.hold(sv):
        with pytest.raises(RequestError, match="model 'cats' is busy"):
            with hub.hold(sv):
                pass
    with hub.hold(sv):  # released: room again
        pass
    for text, why in (("max_batch: 0\n", "max_batch = 0: must be"), ("speed: 3\n", "unknown key 'speed'"),
                      ("max_wait_ms: fast\n", "max_wait_ms = 'fast'"), ("- 1\n", "expected a mapping")):
        (tmp_path / "cats" / "config.yaml").write_text(text)
        with pytest.raises(UserError, match=why) as e:
            read_config(tmp_path / "cats" / "config.yaml")
        assert str(e.value).startswith(str(tmp_path / "cats" / "config.yaml")) and "\n" not in str(e.value)


def test_models_take_turns_so_a_flood_on_one_does_not_starve_another():
    """Two batchers share one turn: model A has 30 requests queued (max_batch 2), B's single request arrives
    after them and is computed after at most one more pass of A's, not after all fifteen."""
    order: list[str] = []

    def runner(tag):
        def run(batch):
            time.sleep(0.01)
            order.append(tag)
            return torch.zeros(len(batch), 3)
        return run

    async def scenario():
        turn = asyncio.Lock()
        a = DynamicBatcher(runner("a"), max_batch=2, max_wait_ms=0, turn=turn)
        b = DynamicBatcher(runner("b"), max_batch=2, max_wait_ms=0, turn=turn)
        await a.start()
        await b.start()
        flood = [asyncio.create_task(a.submit(torch.zeros(1, 3, 4, 4))) for _ in range(30)]
        await asyncio.sleep(0.015)  # A is computing its first pass
        await b.submit(torch.zeros(1, 3, 4, 4))
        await asyncio.gather(*flood)
        await a.stop()
        await b.stop()

    asyncio.run(scenario())
    assert order.count("a") == 15 and order.index("b") <= 3, order


def test_serve_needs_a_checkpoint_or_a_repository_and_refuses_one_that_cannot_serve(small_checkpoint, tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "resnetlab", "serve", *args, "--port", "0"], capture_output=True,
                              text=True, timeout=120)
    publish(small_checkpoint, tmp_path / "repo", "cats", 1, truncate=True)
    for args, why in (((), "give a checkpoint or --models DIR"),
                      ((str(small_checkpoint), "--models", str(tmp_path)), "give a checkpoint or --models DIR"),
                      (("--models", str(tmp_path / "nowhere")), "no such model repository folder"),
                      (("--models", str(tmp_path / "repo")), "no model can be served (cats version 1: "),
                      (("--models", str(tmp_path / "repo"), "--reload", "poll", "--poll-s", "0"), "poll-s = 0.0")):
        r = serve(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and why in r.stderr, (args, r.stderr)


def test_a_polled_repository_swaps_versions_under_load_without_an_error(small_checkpoint, image, tmp_path):
    """A real server with --reload poll under 4 clients posting without pause: a new version, a broken one, another
    new one and a removal, each picked up by the scan; every request is answered 200."""
    repo = tmp_path / "repo"
    publish(small_checkpoint, repo, "cats", 1)
    server = ServeProcess(None, "--models", str(repo), "--reload", "poll", "--poll-s", "0.3", capture=False)
    statuses: list[int] = []
    versions: set[int] = set()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/predict", files={"f": ("x.png", image, "image/png")})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["version"])

    def serving(version: int, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while httpx.get(server.url + "/v1/models").json()["models"][0]["default_version"] != version:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        publish(small_checkpoint, repo, "cats", 2)
        assert serving(2)
        publish(small_checkpoint, repo, "cats", 3, nan=True)  # fails its self-check: 2 keeps serving
        time.sleep(1.5)
        assert serving(2, timeout=0)
        publish(small_checkpoint, repo, "cats", 4)
        assert serving(4)
        shutil.rmtree(repo / "cats" / "4")  # removed: the highest left that loads serves again
        assert serving(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        code, _ = server.stop()
    assert len(statuses) > 20 and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert {1, 2, 4} <= versions and 3 not in versions


def test_the_page_lists_models_and_versions_and_classifies_with_the_one_picked(small_checkpoint, image, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from conftest import headless_chromium
    repo = tmp_path / "repo"
    for name, version in (("cats", 1), ("birds", 7)):
        publish(small_checkpoint, repo, name, version)
    server = ServeProcess(None, "--models", str(repo), "--default-model", "cats")
    driver = headless_chromium(tmp_path)
    try:
        picture = tmp_path / "x.png"
        picture.write_bytes(image)
        driver.get(server.url + "/")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text.startswith("cats v1"))
        pick = Select(driver.find_element(By.ID, "pick"))
        assert driver.find_element(By.ID, "pickline").is_displayed()
        assert [o.get_attribute("value") for o in pick.options] == ["birds", "birds/7", "cats", "cats/1"]
        assert pick.first_selected_option.get_attribute("value") == "cats"  # the default model
        driver.find_element(By.ID, "file").send_keys(str(picture))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card[data-answered-by]"))
        first = driver.find_element(By.CSS_SELECTOR, ".card[data-answered-by]").get_attribute("data-answered-by")
        pick.select_by_value("birds/7")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text.startswith("birds v7"))
        driver.find_element(By.ID, "file").send_keys(str(picture))
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-answered-by]")) == 2)
        newest = driver.find_element(By.CSS_SELECTOR, ".card[data-answered-by]").get_attribute("data-answered-by")
    finally:
        driver.quit()
        server.stop()
    assert (first, newest) == ("cats/1", "birds/7")


def test_an_onnx_version_serves_beside_a_safetensors_one_and_the_backend_picks_the_file(small_checkpoint, image,
                                                                                       tmp_path, monkeypatch):
    """A version folder holding only an ONNX export serves through ONNX Runtime with the classes and answers of
    the checkpoint; with --backend onnx a folder holding both runs its .onnx, and one holding no .onnx is a
    problem the listing names."""
    from resnetlab.cli import main
    from resnetlab.serving.repository import version_files
    monkeypatch.setenv("RESNETLAB_ADMIN_KEY", "boss-key")
    publish(small_checkpoint, tmp_path, "cats", 1)
    export = tmp_path / "export" / "model.onnx"
    export.parent.mkdir()
    assert main(["export", str(small_checkpoint), "--out", str(export), "--check-count", "50"]) == 0
    client, _ = hub_client(tmp_path)
    try:
        torch_answer = predict(client, image).json()
        (tmp_path / "cats" / "2").mkdir()
        shutil.copyfile(export, tmp_path / "cats" / "2" / "model.onnx")
        r = client.post("/admin/models/cats/load", headers=ADMIN)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        onnx_answer = predict(client, image).json()
        card = client.get("/v1/models/cats/versions/2").json()
    finally:
        client.__exit__(None, None, None)
    assert (torch_answer["version"], onnx_answer["version"], card["backend"], card["file"]) == (1, 2, "onnx",
                                                                                              "model.onnx")
    assert [t["class"] for t in onnx_answer["predictions"][0]["top"]] == \
        [t["class"] for t in torch_answer["predictions"][0]["top"]]
    shutil.copyfile(export, tmp_path / "cats" / "1" / "model.onnx")  # both kinds in one folder
    assert version_files(tmp_path / "cats" / "1", "onnx").path.name == "model.onnx"
    assert version_files(tmp_path / "cats" / "1", "torch").path.name == "model.safetensors"
    (tmp_path / "cats" / "3").mkdir()
    shutil.copyfile(small_checkpoint, tmp_path / "cats" / "3" / "model.safetensors")
    assert "holds no .onnx checkpoint" in version_files(tmp_path / "cats" / "3", "onnx").problem
    shutil.copyfile(small_checkpoint, tmp_path / "cats" / "3" / "other.safetensors")
    assert "holds 2 checkpoints (model.safetensors, other.safetensors)" in \
        version_files(tmp_path / "cats" / "3", "torch").problem
