"""Knowledge distillation: train.distill.{teacher, alpha, temperature}."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab.cli import main
from conftest import SGD_DEFAULT
from resnetlab.weights import read_checkpoint

# the SGD default these tests were measured on (the Muon default's lr 0.4 on a ResNet-20 head at batch 20 left a
# 2-epoch student at chance)
BASE = ["--recipe", SGD_DEFAULT, "--no-progress", "data.verify=false", "model.name=resnet20", "train.batch_size=20",
        "data.val_size=0", "train.precision=fp32", "train.tta=false", "schedule.name=cosine"]


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    from conftest import write_cifar10_bin
    root = tmp_path_factory.mktemp("distill")
    write_cifar10_bin(root / "data")
    assert main(["train", "--data-dir", str(root / "data"), "--out", str(root / "teacher"), "train.epochs=3",
                 *BASE, "model.name=resnet32"]) == 0  # another, deeper net as the teacher
    return root / "teacher" / "best.safetensors", root / "data"


def _train(data: Path, out: Path, *extra: str) -> dict:
    assert main(["train", "--data-dir", str(data), "--out", str(out), *BASE, *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _weights(run: Path) -> dict:
    return read_checkpoint(run / "last.safetensors")[0]


def test_alpha_zero_is_plain_training_and_the_teacher_costs_flops(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    plain = _train(data, tmp_path / "plain", "train.epochs=1")
    zero = _train(data, tmp_path / "zero", "train.epochs=1", f"train.distill.teacher={teacher.parent}",
                  "train.distill.alpha=0")  # the teacher's run folder: its best checkpoint, named in the recipe
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "zero")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the teacher ran, and changed nothing but the cost
    assert zero["train_pflop"] > plain["train_pflop"] * 1.2
    assert f"teacher: {teacher}" in (tmp_path / "zero" / "recipe.yaml").read_text()


def test_distilled_student_follows_its_teacher(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    _train(data, tmp_path / "plain", "train.epochs=2")
    _train(data, tmp_path / "kd", "train.epochs=2", f"train.distill.teacher={teacher}", "train.distill.alpha=0.9",
           "train.distill.temperature=2")
    t_model, _ = resnetlab.load_model(teacher)
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        target = t_model(x).softmax(1)

        def kl(run: Path) -> float:
            m, _ = resnetlab.load_model(run / "best.safetensors")
            return float(torch.nn.functional.kl_div(m(x).log_softmax(1), target, reduction="batchmean"))
    assert kl(tmp_path / "kd") < kl(tmp_path / "plain")


def test_distillation_resumes_exactly_after_sigkill(teacher_and_data, tmp_path):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from test_training import _train_cmd, kill_after_first_epoch
    teacher, data = teacher_and_data
    kd = [f"train.distill.teacher={teacher}", "train.distill.alpha=0.7", "train.distill.temperature=3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_train_cmd(data, tmp_path / "ref", kd), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(data, killed, kd), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_after_first_epoch(proc, killed)
    subprocess.run([sys.executable, "-m", "resnetlab", "train", "--resume", str(killed), "--data-dir", str(data),
                    "--no-progress"], check=True, env=env, capture_output=True)
    a, b = load_file(tmp_path / "ref" / "last.safetensors"), load_file(killed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_with_other_classes_is_refused_in_one_line(teacher_and_data, tmp_path, capsys, image_folder):
    teacher, _ = teacher_and_data
    assert main(["train", "--out", str(tmp_path / "x"), "--no-progress", "data.dataset=folder",
                 f"data.path={image_folder}", "model.name=resnet20", "train.epochs=1", "train.batch_size=16",
                 f"train.distill.teacher={teacher}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the teacher's classes" in err and "\n" not in err
    assert main(["train", "--out", str(tmp_path / "y"), "--no-progress", "train.distill.teacher=/no/such.safetensors",
                 "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.distill.teacher: /no/such.safetensors: checkpoint not found" in err and "\n" not in err
