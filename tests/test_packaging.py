"""The tool as a pip user meets it: version, bundled recipes by name from any folder, the recipe keys, the
resolved recipe in every run folder, the Python entry points, Ctrl-C with the command that resumes, and the
zoo table printed at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import resnetlab
from resnetlab.cli import main
from resnetlab.training.config import Recipe, bundled_recipes, load_recipe, recipe_from_dict
from resnetlab.weights import read_full

TINY = ["model.name=resnet20", "train.batch_size=20", "train.eval_batch_size=40", "data.val_size=40",
        "train.precision=fp32", "optim.lr=0.05", "data.verify=false", "data.augment.epoch_sizes=[]",
        "train.tta=false"]


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"resnetlab {resnetlab.__version__}"


def test_the_command_line_and_decoding_load_without_torch():
    """`resnetlab --help`/`--version` answer at once, and resnetlab.decoding (file → uint8 pixels) needs no torch:
    the package and the command modules import what a command needs when it runs."""
    code = ("import sys; from resnetlab.cli import build_parser; build_parser(); import resnetlab.decoding; "
            "torch = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); assert not torch, torch")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "resnetlab", "--version"], capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, f"resnetlab {resnetlab.__version__}")


def test_recipes_lists_every_bundled_recipe_with_its_description(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in bundled_recipes():
        line = next(x for x in lines if x.startswith(name + " "))
        assert load_recipe(name).description in line and len(load_recipe(name).description) > 30


def test_recipes_show_prints_the_yaml_that_trains(capsys):
    assert main(["recipes", "show", "cifar10_quick"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert recipe_from_dict(dict(data, name="cifar10_quick")) == load_recipe("cifar10_quick")


def test_recipes_keys_lists_every_key_with_default_and_range(capsys):
    assert main(["recipes", "keys"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs" in out and "optim.lr" in out and "data.augment.jpeg_quality" in out
    line = next(x for x in out.splitlines() if x.startswith("schedule.name "))
    assert "constant | multistep | cosine | onecycle" in line


def test_unknown_recipe_name_is_one_line_naming_the_bundled_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", "cifar10_quik"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar10_quik: no such recipe file" in err and "cifar10_quick" in err


def test_a_file_beside_a_bundled_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cifar10_quick").write_text("train: {epochs: 3}\n")
    assert load_recipe("cifar10_quick").train.epochs == 3
    assert load_recipe("cifar10_quick.yaml").train.epochs == 10  # no such file here: the bundled one


def test_dataclass_defaults_are_a_valid_recipe():
    assert recipe_from_dict({}) == Recipe()
    assert recipe_from_dict({"model": {"name": "resnet20"}}).schedule.name == "cosine"


def test_python_train_from_another_folder_writes_the_resolved_recipe(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of the checkout is reachable by a relative path
    out = tmp_path / "py-run"
    overrides = dict(item.split("=", 1) for item in TINY)
    overrides = {k: yaml.safe_load(v) for k, v in overrides.items()} | {"train.epochs": 1}
    results = resnetlab.train("cifar10_quick", out=out, data_dir=tiny_cifar, overrides=overrides, log=lambda *a, **k: None)
    assert 0 <= results["test"]["top1"] <= 1 and results["epochs"] == 1
    stored = load_recipe(out / "recipe.yaml")
    assert stored == recipe_from_dict(read_full(out / "last.safetensors")[1]["recipe"])
    assert stored.train.epochs == 1 and stored.model.name == "resnet20" and stored.name == "cifar10_quick"


def _train_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "resnetlab", "train", "--data-dir", str(data), "--out", str(out), "--no-progress",
            *TINY, "train.epochs=12", "train.log_every=1"]


def test_sigterm_saves_mid_epoch_prints_the_resume_command_and_resumes_exactly(tiny_cifar, tmp_path):
    """Schedulers stop jobs with SIGTERM: it is treated as Ctrl-C is (both go through the same stop request)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(tiny_cifar, ref), check=True, env=env, capture_output=True)
    run = tmp_path / "stopped"
    proc = subprocess.Popen(_train_cmd(tiny_cifar, run), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.safetensors").exists():  # epoch 1 is written
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = err.strip().splitlines()
    assert lines[-1] == f"continue with: resnetlab train --resume {run}"
    assert lines[-2].startswith("interrupted (SIGTERM) at epoch ") and "Traceback" not in err
    assert not (run / ".lock").exists()
    state = read_full(run / "last.safetensors")[2]["trainer"]
    assert state["epoch"] < 12, "the run finished before it could be interrupted"
    subprocess.run([sys.executable, "-m", "resnetlab", "train", "--resume", str(run), "--no-progress"], check=True,
                   env=env, capture_output=True)
    a, b = load_file(ref / "last.safetensors"), load_file(run / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_models_table_shipped_equals_the_models_counted_now():
    from resnetlab.cli.models import shipped_table, table
    counted = {r["name"]: r for r in table(count=True)}
    assert counted == shipped_table()
    assert counted["resnet50"]["params"] == 25_557_032 and counted["resnet20"]["params"] == 269_722
