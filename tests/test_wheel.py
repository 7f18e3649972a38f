"""The package as a pip user gets it: a wheel built from this checkout, installed into a fresh venv outside
the checkout, used from an empty folder — train a bundled recipe by name, eval, predict, export, serve.

torch and torchvision (and what they require) come from the development venv's own installation, hard-linked
into the fresh venv file by file from their installed-files records: the same bytes pip put there from the
local wheels, in seconds instead of a minute and 5.5 GB of unpacking. Everything else — resnetlab itself and
its other dependencies, with the serve and deploy extras — pip installs into the fresh venv from the wheel's
own metadata, so a dependency the wheel forgets to declare fails here."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import resnetlab
from conftest import png_bytes
from resnetlab.testing import ServeProcess

ROOT = Path(__file__).resolve().parents[1]


def _closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, recursively (markers that do not apply are skipped)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here: pip resolves it if it is needed
        seen[key] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return list(seen.values())


def _link_into(dists: list[metadata.Distribution], site: Path) -> None:
    for dist in dists:
        for f in dist.files or []:
            src = Path(dist.locate_file(f))
            dst = site / f
            if not src.is_file() or not dst.resolve().is_relative_to(site.resolve()):
                continue  # scripts outside site-packages (bin/) are not needed
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel of this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(dist), str(ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("resnetlab-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    _link_into(_closure(["torch", "torchvision"]), site)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"{wheel}[serve,deploy]"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv / "bin"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RESNETLAB_DATA", "PYTHONPATH", "VIRTUAL_ENV")}
    return dict(env, OMP_NUM_THREADS="2")


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(bin_dir / "resnetlab"), *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"resnetlab {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def test_wheel_in_a_fresh_venv_trains_evaluates_predicts_exports_and_serves(fresh_venv, real_data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([str(fresh_venv / "python"), "-c", "import resnetlab; print(resnetlab.__file__)"],
                           cwd=empty, env=_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(fresh_venv.parent) and not Path(where).is_relative_to(ROOT)
    assert _run(fresh_venv, empty, "--version").stdout.strip() == f"resnetlab {resnetlab.__version__}"
    assert "cifar10_quick " in _run(fresh_venv, empty, "recipes").stdout
    _run(fresh_venv, empty, "train", "--recipe", "cifar10_quick", "--data-dir", str(real_data), "data.subset=1000",
         "train.epochs=1", "--no-progress", "data.verify=false")
    run = empty / "runs" / "cifar10_quick"
    assert (run / "recipe.yaml").is_file() and (run / "best.safetensors").is_file()
    results = json.loads((run / "results.json").read_text())
    evaluated = json.loads(_run(fresh_venv, empty, "eval", str(run), "--json").stdout)
    assert evaluated["n"] == results["test"]["n"] == 200  # the run's own test slice, found from its metadata
    img = empty / "cat.png"
    img.write_bytes(png_bytes((np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)))
    pred = json.loads(_run(fresh_venv, empty, "predict", str(run / "best.safetensors"), str(img), "--top-k", "5",
                           "--json").stdout)
    assert len(pred[0]["top"]) == 5 and pred[0]["top"][0]["class"] in results["per_class"]
    _run(fresh_venv, empty, "export", str(run / "best.safetensors"))
    assert (run / "best.onnx").is_file()
    server = ServeProcess(run / "best.safetensors", command=(str(fresh_venv / "resnetlab"),), cwd=empty, env=_env())
    try:
        req = urllib.request.Request(server.url + "/v1/predict", data=img.read_bytes(),
                                     headers={"content-type": "image/png"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
        assert r.status == 200 and body["predictions"][0]["top"][0]["class"] in results["per_class"]
    finally:
        code, _ = server.stop()
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down cleanly


def test_readme_and_usage_python_snippets_run_as_written_from_the_fresh_install(fresh_venv, real_data, tmp_path):
    """Every ```python block of the README and of docs/usage.md (the reference it links to), run by the fresh
    venv's Python from an empty folder, with the data root in $RESNETLAB_DATA as the README says."""
    snippets = []
    for doc in ("README.md", "docs/usage.md"):
        blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(encoding="utf-8"), re.S)
        assert blocks, f"{doc} has no python block"
        snippets += [(f"{doc} snippet {i + 1}", code) for i, code in enumerate(blocks)]
    assert len(snippets) >= 3
    for i, (name, code) in enumerate(snippets):
        folder = tmp_path / f"snippet{i}"
        folder.mkdir()
        r = subprocess.run([str(fresh_venv / "python"), "-c", code], cwd=folder, capture_output=True, text=True,
                           env=dict(_env(), RESNETLAB_DATA=str(real_data)), timeout=600)
        assert r.returncode == 0, f"{name}:\n{code}\n{r.stderr[-3000:]}"
