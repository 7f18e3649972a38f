import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import resnetlab
import resnetlab.inference.predict
from resnetlab import UserError
from resnetlab.cli import main
from resnetlab.models import apply_strategy
from resnetlab.weights import fetch_torchvision_weights, load_backbone_weights, read_checkpoint, read_weights

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.batch_size=20", "train.eval_batch_size=50", "train.precision=fp32", "train.log_every=2",
        "finetune.stage1_epochs=1", "train.epochs=1", "data.val_size=0.2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One small CIFAR-trained resnet20, shared by the tests of this module (trained once)."""
    from conftest import write_cifar10_bin
    root = tmp_path_factory.mktemp("pretrained")
    write_cifar10_bin(root / "data")
    out = root / "pre"
    assert main(["train", "--data-dir", str(root / "data"), "--out", str(out), "--no-progress", "data.verify=false",
                 "model.name=resnet20", "train.epochs=1", "train.batch_size=20", "data.val_size=0",
                 "schedule.name=cosine", "train.precision=fp32"]) == 0
    return out / "best.safetensors"


def test_torchvision_state_dict_loads_with_new_head(tmp_path, capsys):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    model = resnetlab.create_model("resnet18", num_classes=7)
    rep = load_backbone_weights(model, path)
    assert rep["new"] == ["fc.weight", "fc.bias"] and len(rep["loaded"]) == len(tv.state_dict()) - 2
    assert torch.equal(model.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert "newly initialised: fc.weight, fc.bias" in capsys.readouterr().out


def test_mismatched_backbone_is_refused_with_list(tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(UserError, match="do not match .*unexpected: layer1.2"):
        load_backbone_weights(resnetlab.create_model("resnet18"), path)


def test_pickled_objects_are_not_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": torchvision.models.resnet18(weights=None)}, path)  # a whole module: needs unpickling
    with pytest.raises(UserError, match="cannot read as a weights-only state_dict"):
        read_weights(path)


def test_torchvision_download_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="cannot download .*offline\\? save the torchvision state_dict"):
        fetch_torchvision_weights("resnet18", url="http://127.0.0.1:9/resnet18-f37072fd.pth")


def test_torchvision_download_checks_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), fake)
    with pytest.raises(UserError, match="expected f37072fd"):
        fetch_torchvision_weights("resnet18", url=fake.as_uri())
    assert not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("strategy,trainable", [("linear-probe", {"fc"}), ("partial", {"fc", "layer3"}),
                                                ("full", {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"})])
def test_strategies_freeze_the_right_parts(strategy, trainable):
    model = resnetlab.create_model("resnet20")
    frozen_bn = apply_strategy(model, strategy, 1, freeze_bn_stats=False)
    got = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable
    model.train()
    frozen_bn(model)
    if strategy == "linear-probe":
        assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    if strategy == "partial":
        assert model.layer3[0].bn1.training and not model.layer2[0].bn1.training


def _probe_weights_unchanged(before, after_path, prefix="layer"):
    after, _ = read_checkpoint(after_path)
    return all(torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


@pytest.mark.parametrize("strategy", ["linear-probe", "partial", "full", "two-stage"])
def test_finetune_cli_all_strategies(strategy, pretrained, image_folder, tmp_path, capsys):
    out = tmp_path / strategy
    assert main(["finetune", "--weights", str(pretrained), "--data", str(image_folder), "--strategy", strategy,
                 "--out", str(out), "--no-progress", *FAST, "finetune.compare=false" if strategy != "two-stage"
                 else "finetune.compare=true"]) == 0
    text = capsys.readouterr().out
    pre, _ = read_checkpoint(pretrained)
    # every tensor of the pretrained net but its 10-class head, whose shape differs from the new 3-class one
    assert f"loaded {len(pre) - 2} tensors; newly initialised: fc.weight, fc.bias" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["class_0", "class_1", "class_2"] and summary["after"]["n"] > 0
    assert (out / "report.md").is_file()
    from resnetlab.weights import resolve_checkpoint
    final = "stage2-" if strategy == "two-stage" else f"{strategy}-"
    assert resolve_checkpoint(out) == out / f"{final}best.safetensors"  # the folder stands for its final stage
    ckpt = next(out.glob("*best.safetensors"))
    _, meta = read_checkpoint(ckpt)
    assert meta["num_classes"] == 3 and meta["finetuned_from"] == str(pretrained)
    if strategy == "linear-probe":  # backbone (incl. BN statistics) untouched
        assert _probe_weights_unchanged(pre, ckpt)
    if strategy == "two-stage":
        assert summary["before_linear_probe"] is not None
        assert (out / "stage1-best.safetensors").is_file() and (out / "stage2-best.safetensors").is_file()


def test_continual_finetune_appends_classes(pretrained, tmp_path, capsys):
    from PIL import Image
    from conftest import synthetic_images
    folder = tmp_path / "more"
    x, y = synthetic_images(44, num_classes=11, seed=9)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "zebra"]
    for i, (img, label) in enumerate(zip(x, y)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / names[label] / f"{i}.png")
    out = tmp_path / "cont"
    assert main(["finetune", "--weights", str(pretrained), "--data", str(folder), "--strategy", "linear-probe",
                 "--out", str(out), "--no-progress", *FAST, "data.val_size=0", "train.early_stopping.patience=0",
                 "optim.lr=1e-9"]) == 0
    assert "kept 10 trained class rows, 1 new class rows" in capsys.readouterr().out
    pre, pre_meta = read_checkpoint(pretrained)
    new, meta = read_checkpoint(out / "linear-probe-best.safetensors")
    assert meta["classes"][:10] == pre_meta["classes"] and meta["classes"][10] == "zebra"
    assert torch.allclose(new["fc.weight"][:10], pre["fc.weight"], atol=1e-6)


def test_finetune_bad_weights_file(image_folder, tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["finetune", "--weights", str(bad), "--data", str(image_folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable safetensors checkpoint" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_predict_cli(pretrained, image_folder, capsys):
    assert main(["predict", str(pretrained), str(image_folder / "class_0"), "--top-k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    files = sorted((image_folder / "class_0").glob("*.png"))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    # the same pixels through the model by hand: predict must give the same classes and probabilities
    from resnetlab.decoding import ResizePolicy, load_uint8
    from resnetlab.preprocessing import normalize
    model, meta = resnetlab.load_model(pretrained)
    x = torch.from_numpy(np.stack([load_uint8(f, ResizePolicy(32)) for f in files]))
    with torch.no_grad():
        probs = model(normalize(x, meta.mean, meta.std)).softmax(1)
    top = probs.topk(2, dim=1)
    for r, p, i in zip(rows, top.values, top.indices):
        assert [t["class"] for t in r["top"]] == [meta.classes[j] for j in i.tolist()]
        assert [t["prob"] for t in r["top"]] == pytest.approx(p.tolist(), abs=1e-4)
    assert main(["predict", str(pretrained), str(image_folder / "missing.png")]) == 2
    assert "no such image file or folder" in capsys.readouterr().err


def test_full_strategy_keeps_fixed_whitening_frozen():
    model = resnetlab.create_model("resnet9", widths=(8, 8, 8, 8), whiten=True)
    apply_strategy(model, "full", 1, freeze_bn_stats=False)
    assert not model.whiten.weight.requires_grad and model.prep[0].weight.requires_grad


def test_discriminative_learning_rates():
    from resnetlab.models import stage_lr_scales as layer_lr_scales
    from resnetlab.training.config import OptimConfig
    from resnetlab.training.optim import param_groups
    model = resnetlab.create_model("resnet20")
    scales = layer_lr_scales(model, 0.5)
    assert scales == {"conv1.": 0.0625, "bn1.": 0.0625, "layer1.": 0.125, "layer2.": 0.25, "layer3.": 0.5}
    groups = param_groups(model, OptimConfig(lr=0.1), scales)
    by_scale = {g["lr_scale"]: g for g in groups}
    assert max(by_scale) == 1.0 and min(by_scale) < 0.1
    fc = model.fc.weight
    assert any(fc is p for p in by_scale[1.0]["params"])
    assert layer_lr_scales(model, 1.0) is None


def test_torchvision_pth_finetune_resizes_and_uses_imagenet_normalisation(image_folder, tmp_path, capsys):
    path = tmp_path / "tv18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    out = tmp_path / "tv"
    assert main(["finetune", "--weights", str(path), "--arch", "resnet18", "--data", str(image_folder),
                 "--strategy", "linear-probe", "--image-size", "40", "--out", str(out), "--no-progress", *FAST]) == 0
    _, meta = read_checkpoint(out / "linear-probe-best.safetensors")
    assert meta["input_size"] == 40 and meta["mean"] == [0.485, 0.456, 0.406] and meta["arch"] == "resnet18"
    assert "loaded 120 tensors" in capsys.readouterr().out


def _trained(real_data: Path, out: Path, *extra: str) -> Path:
    assert main(["train", "--data-dir", str(real_data), "--out", str(out), "--no-progress", "data.subset=2500",
                 "data.val_size=0", "train.epochs=1", "train.max_steps=3", "train.batch_size=50",
                 "schedule.name=constant", "optim.lr=0.01", "train.precision=fp32", *extra]) == 0
    return out / "best.safetensors"


@pytest.mark.parametrize("extra", [("model.name=resnet20",),
                                   ("model.name=resnet18", "data.image_size=64")],
                         ids=["cifar-stem", "imagenet-stem-64px"])
def test_predict_on_png_files_equals_eval(real_data, tmp_path, extra):
    """500 CIFAR-10 test images written as PNG files: `predict` gives exactly eval's predictions."""
    from resnetlab.training.config import recipe_from_dict
    from resnetlab.training.runner import load_splits, make_loaders
    ckpt = _trained(real_data, tmp_path / "run", *extra)
    model, meta = resnetlab.load_model(ckpt)
    recipe = recipe_from_dict(meta.recipe)
    splits = load_splits(recipe.data, str(real_data), progress=False, mean_std=(meta.mean, meta.std))
    _, _, test_l = make_loaders(recipe, splits, torch.device("cpu"), False, meta.input_size)
    with torch.no_grad():
        eval_pred = torch.cat([model(x).argmax(1) for x, _ in test_l])
    assert len(eval_pred) == 500
    folder = tmp_path / "png"
    folder.mkdir()
    for i, img in enumerate(splits.test.take(slice(None))):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    rows = resnetlab.inference.predict.predict(ckpt, [str(folder)], top_k=1)
    names = [r["top"][0]["class"] for r in rows]
    assert names == [meta.classes[j] for j in eval_pred.tolist()]  # 100 % agreement
    # the Python API takes the same images as arrays, PIL images and a uint8 batch, with the same answer
    clf = resnetlab.load(ckpt, device="cpu")
    some = splits.test.take(slice(0, 8))
    as_np = [x.permute(1, 2, 0).numpy() for x in some]
    for batch in (as_np, [Image.fromarray(a) for a in as_np], some):
        assert [r["top"][0]["class"] for r in clf.predict(batch, top_k=3)] == names[:8]


def test_a_fine_tuning_run_folder_stands_for_its_last_stage_checkpoint(tmp_path):
    from resnetlab.errors import UserError
    from resnetlab.weights import resolve_checkpoint
    run = tmp_path / "ft"
    run.mkdir()
    with pytest.raises(UserError, match="run folder has no best.safetensors or last.safetensors, nor a summary"):
        resolve_checkpoint(run)
    for name in ("stage1-best.safetensors", "stage2-best.safetensors", "stage2-last.safetensors"):
        (run / name).write_bytes(b"")
    (run / "summary.json").write_text(json.dumps({"strategy": "two-stage", "checkpoint": "stage2-best.safetensors"}))
    assert resolve_checkpoint(run) == run / "stage2-best.safetensors"  # two-stage: the last stage's best
    (run / "summary.json").write_text(json.dumps({"checkpoint": "../../elsewhere/stage2-best.safetensors"}))
    assert resolve_checkpoint(run) == run / "stage2-best.safetensors"  # only ever a file inside the folder
    (run / "best.safetensors").write_bytes(b"")
    assert resolve_checkpoint(run) == run / "best.safetensors"


def _finetune_cmd(*args: str) -> list[str]:
    import sys
    return [sys.executable, "-m", "resnetlab", "finetune", "--no-progress", *args]


def test_a_two_stage_run_killed_in_its_second_stage_resumes_exactly(pretrained, image_folder, tmp_path):
    """SIGKILL while stage 2 trains (stage 1 finished); `finetune --resume` continues it, and every checkpoint
    equals an uninterrupted run's. --weights takes the pretrained run folder."""
    import os
    import signal
    import subprocess
    import time
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    common = ["--weights", str(pretrained.parent), "--data", str(image_folder), "--strategy", "two-stage",
              *FAST, "train.epochs=8", "train.checkpoint_every_min=0.000001"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_finetune_cmd(*common, "--out", str(ref)), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_finetune_cmd(*common, "--out", str(cut)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "stage2-last.safetensors").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    from resnetlab.weights import read_full
    assert (cut / "stage1-last.safetensors").is_file() and not (cut / "summary.json").exists()
    assert read_full(cut / "stage2-last.safetensors")[2]["trainer"]["epoch"] < 8, "stage 2 ended before the kill"
    r = subprocess.run(_finetune_cmd("--resume", str(cut)), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in ref.glob("*.safetensors"))
    assert names == sorted(p.name for p in cut.glob("*.safetensors")) and "stage2-best.safetensors" in names
    for name in names:
        a, b = read_checkpoint(ref / name)[0], read_checkpoint(cut / name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert sa["after"] == sb["after"] and sa["before_linear_probe"] == sb["before_linear_probe"]


def test_finetune_resume_refuses_what_cannot_be_continued(pretrained, image_folder, tmp_path, capsys):
    assert main(["finetune", "--resume", str(tmp_path)]) == 2
    assert "no fine-tuning checkpoint (<stage>-last.safetensors) to resume" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(pretrained.parent)]) == 2  # a training run
    assert f"continue it with `resnetlab train --resume {pretrained.parent}`" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path), "--strategy", "full"]) == 2
    assert "the run's own strategy is used; drop --strategy" in capsys.readouterr().err
    assert main(["finetune", "--data", str(image_folder)]) == 2
    assert "finetune needs --weights (or --resume RUN to continue a run)" in capsys.readouterr().err
    out = tmp_path / "ft"
    assert main(["finetune", "--weights", str(pretrained), "--data", str(image_folder), "--strategy", "full",
                 "--out", str(out), "--no-progress", *FAST, "finetune.compare=false"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    assert f"a fine-tuning run; continue it with `resnetlab finetune --resume {out}`" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(out), "--no-progress"]) == 0  # finished: nothing trains again
    assert "run already finished" in capsys.readouterr().out
