"""Trust: checkpoints that cannot steer the program, run folders that cannot collide or escape, and one
clear line (exit 2, nothing half-written) for every bad input."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab import UserError
from resnetlab import weights as weights_mod
from resnetlab.cli import main
from resnetlab.weights import read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=resnet20", "train.batch_size=20", "train.eval_batch_size=40", "data.val_size=40",
        "train.precision=fp32", "schedule.name=cosine", "optim.lr=0.05", "train.log_every=2", "data.verify=false"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def crafted_checkpoint(path: Path, **meta_changes) -> Path:
    model = resnetlab.create_model("resnet20", num_classes=10)
    meta = {"arch": "resnet20", "kwargs": {}, "num_classes": 10, "classes": [f"c{i}" for i in range(10)],
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32, "recipe": None}
    meta.update(meta_changes)
    save_checkpoint(path, model.state_dict(), meta)
    return path


def png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    Image.fromarray(torch.randint(0, 255, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()).save(path)
    return path


# ------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("change,message", [
    ({"kwargs": {"pretrained": "/etc/passwd"}}, "resnet20 has no argument 'pretrained'"),
    ({"kwargs": {"pretrained": "torchvision:resnet18"}}, "resnet20 has no argument 'pretrained'"),
    ({"kwargs": {"stem": "foo"}}, "stem='foo': expected one of imagenet, cifar"),
    ({"run_this": "rm -rf /"}, "unknown checkpoint metadata key(s) run_this"),
    ({"arch": "os.system"}, "unknown model 'os.system'"),
    ({"input_size": 10**9}, "'input_size' must be an integer between 8 and 4096"),
    ({"classes": ["a"]}, "'classes' must be a list of 10 names"),
])
def test_checkpoint_metadata_is_data(tmp_path, capsys, monkeypatch, change, message):
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or real_load(*a, **k))
    monkeypatch.setattr(weights_mod, "fetch", lambda *a, **k: opened.append(a))
    ckpt = crafted_checkpoint(tmp_path / "evil.safetensors", **change)
    img = png(tmp_path / "x.png")
    assert main(["predict", str(ckpt), str(img)]) == 2
    assert message in one_line_error(capsys)
    assert main(["eval", str(ckpt)]) == 2
    assert message in one_line_error(capsys)
    assert opened == []  # nothing named by the checkpoint was opened or fetched


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ".."])
def test_recipe_name_cannot_place_a_run(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", "cifar10_quick", "--data-dir", str(tmp_path),
                 f"name={name}"]) == 2
    assert "recipe key name" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cached_torchvision_weights_are_rechecked(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path))
    cached = tmp_path / "resnet18-f37072fd.pth"
    cached.write_bytes(b"verified bytes")
    (tmp_path / "resnet18-f37072fd.pth.sha256").write_text(weights_mod.file_digest(cached) + "\n")
    assert weights_mod.fetch_torchvision_weights("resnet18") == cached
    cached.write_bytes(b"tampered bytes")
    with pytest.raises(UserError, match="cached weights changed since they were verified"):
        weights_mod.fetch_torchvision_weights("resnet18")


# ---------------------------------------------------------------------------------------- run folders
def test_a_second_run_on_a_claimed_folder_is_refused(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{holder.pid}\n")
        assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                     "train.epochs=1"]) == 2
        assert f"in use by another run (process {holder.pid})" in one_line_error(capsys)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its stale lock is taken over with a message, and released at the end
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=1"]) == 0
    assert f"taking over the lock of a run that is gone (process {holder.pid})" in capsys.readouterr().out
    assert (out / "last.safetensors").is_file() and not (out / ".lock").exists()


def test_a_run_that_dies_before_its_first_checkpoint_leaves_nothing(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "runs" / "diverged"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=1", "optim.lr=1e30", "schedule.name=constant"]) == 2
    err = one_line_error(capsys)
    assert "loss became" in err and "no checkpoint had been written yet" in err and "is kept" not in err
    assert not out.exists()


def test_sigterm_before_the_first_checkpoint_leaves_no_folder_and_says_so(tiny_cifar, tmp_path, capsys,
                                                                         monkeypatch):
    """SIGTERM after the run folder was claimed (recipe.yaml written, .lock held) and before any checkpoint."""
    import signal
    import time
    from resnetlab.training import engine

    def terminated(self, resume=False):
        assert (self.run_dir / "recipe.yaml").is_file() and (self.run_dir / ".lock").is_file()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        pytest.fail("SIGTERM did not stop the run")
    monkeypatch.setattr(engine.Trainer, "fit", terminated)
    out = tmp_path / "runs" / "stopped"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY]) == 143
    err = capsys.readouterr().err.strip()
    assert err == "interrupted (SIGTERM); no checkpoint had been written yet, so there is nothing to resume"
    assert not out.exists()


def test_resume_sweeps_temp_files(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=1"]) == 0
    (out / ".last.safetensors.k2j3.tmp").write_bytes(b"half")
    (out / ".tmpab12cd").write_bytes(b"half")
    assert main(["train", "--resume", str(out), "train.epochs=2", "--no-progress"]) == 0
    assert "removed 2 temp file(s)" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))


def test_checkpoints_get_the_normal_file_mode_and_text_files_are_atomic(tmp_path, monkeypatch):
    mask = os.umask(0o022)
    try:
        path = crafted_checkpoint(tmp_path / "c.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
    from resnetlab.files import atomic_write
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")

    def dies(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):
        atomic_write(target, dies)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "metrics.csv"]


def test_eval_of_a_run_folder_writes_into_it(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=1"]) == 0
    assert main(["eval", str(out), "--no-verify"]) == 0
    assert (out / "eval" / "confusion.csv").is_file() and not (tmp_path / "runs" / "eval").exists()


# ------------------------------------------------------------------------------- refused before work
@pytest.mark.parametrize("override,message", [
    ("train.eval_batch_size=0", "recipe key train.eval_batch_size: must be >= 1"),
    ("train.log_every=0", "recipe key train.log_every: must be >= 1"),
    ("train.max_steps=-1", "recipe key train.max_steps: must be >= 0"),
    ("model.kwargs.stem=foo", "recipe key model.kwargs.stem='foo'"),
    ("model.kwargs.widths=[1,2]", "recipe key model.kwargs.widths=[1, 2]: expected a list of 3"),
    ("data.subset=-5", "recipe key data.subset: must be >= 0"),
    ("optim.betas=[0.9,2]", "recipe key optim.betas"),
    ("schedule.milestones=[5,x]", "recipe key schedule.milestones"),
    ("optim.lr=.nan", "recipe key optim.lr"),
    ("train.early_stopping.patience=3", "early stopping needs a validation split"),
])
def test_bad_recipe_values_are_refused_at_once(tiny_cifar, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_cifar), "--out", str(out), "model.name=resnet20", "data.val_size=0",
            override]
    assert main(args) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_bad_files_and_options(tmp_path, capsys):
    binary = tmp_path / "r.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(["train", "--recipe", str(binary)]) == 2
    assert "not a text file" in one_line_error(capsys)
    ckpt = crafted_checkpoint(tmp_path / "c.safetensors")
    img = png(tmp_path / "x.png")
    for k in ("0", "-1"):
        assert main(["predict", str(ckpt), str(img), "--top-k", k]) == 2
        assert "top-k must be a positive integer" in one_line_error(capsys)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--out", str(afile / "run"), "model.name=resnet20"]) == 2
    assert "is a file" in one_line_error(capsys)


def test_paths_are_strings_and_options_mix_with_overrides(tmp_path):
    from resnetlab.cli import parse
    from resnetlab.training.config import load_recipe
    r = load_recipe(None, ["data.dataset=folder", "schedule.name=cosine"], literal={"data.path": "imgs #2"})
    assert r.data.path == "imgs #2"
    assert load_recipe(None, ["data.dataset=folder", "schedule.name=cosine"], literal={"data.path": "010"}).data.path == "010"
    args = parse(["train", "--out", "X", "train.epochs=1", "--no-progress", "optim.lr=0.1"])
    assert args.out == "X" and args.no_progress and args.overrides == ["train.epochs=1", "optim.lr=0.1"]
    with pytest.raises(SystemExit):
        parse(["train", "--nonsense"])


def test_argument_errors_and_recipe_paths_are_one_line(tmp_path, capsys):
    for argv in (["train", "--nonsense"], ["serve"], ["nope"], ["export", "x", "--format", "zip"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and "--help" in err, (argv, err)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    assert main(["recipes", "show", str(secret)]) == 2  # shown only when it is a recipe
    out, err = capsys.readouterr()
    assert "root:x" not in out and "a recipe must be a YAML mapping" in err


def test_exponent_numbers_without_a_dot_are_numbers_in_overrides_and_recipe_files(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-12 as a string; model arguments are checked as numbers and refused it."""
    from resnetlab.training.config import load_recipe
    r = load_recipe(None, ["model.name=resnet9", "model.kwargs.bn_eps=1e-12", "model.kwargs.whiten_eps=5E-4",
                           "optim.lr=2e-1"])
    assert r.model.kwargs == {"bn_eps": 1e-12, "whiten_eps": 5e-4} and r.optim.lr == 0.2
    f = tmp_path / "r.yaml"
    f.write_text("model: {name: resnet9, kwargs: {bn_eps: 1e-12}}\ndescription: 1e5 images\n")
    r = load_recipe(str(f))
    assert r.model.kwargs["bn_eps"] == 1e-12 and r.description == "1e5 images"


def test_disk_full_mid_run_is_one_line_and_keeps_the_last_good_checkpoint(tiny_cifar, tmp_path, capsys,
                                                                               monkeypatch):
    calls = {"n": 0}
    real = weights_mod.save_file

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote best + last; the next write finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)
    monkeypatch.setattr(weights_mod, "save_file", full_disk)
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=3"]) == 2
    assert "No space left on device" in one_line_error(capsys)
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["epoch"] == 1 and not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------- resume and method
def test_resume_uses_stored_data_root_honours_flags_and_safe_overrides(tiny_cifar, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data does not exist: only the stored data root can work
    out = tmp_path / "run"
    assert main(["train", "--recipe", "cifar10_quick", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=1"]) == 0
    assert main(["train", "--resume", str(out), "model.name=resnet56"]) == 2
    assert "recipe key model.name cannot change when resuming" in one_line_error(capsys)
    if not torch.cuda.is_available():
        assert main(["train", "--resume", str(out), "--device", "cuda"]) == 2
        assert "CUDA is not available" in one_line_error(capsys)
    assert main(["train", "--resume", str(out), "train.epochs=2", "optim.lr=0.01", "--no-progress"]) == 0
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["recipe"]["train"]["epochs"] == 2 and meta["recipe"]["optim"]["lr"] == 0.01


def test_mid_epoch_checkpoint_resume_is_exact(tiny_cifar, tmp_path, monkeypatch):
    from resnetlab.training import engine
    common = ["--data-dir", str(tiny_cifar), "--no-progress", *TINY, "train.epochs=2", "train.ema_decay=0.8",
              "data.augment.cutout=8", "train.checkpoint_every_min=0.000001"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", "--out", str(ref), *common]) == 0
    real_step, calls = engine.Trainer.train_step, {"n": 0}

    def interrupted(self, x, y):
        calls["n"] += 1
        if calls["n"] == 12:  # 8 steps per epoch: step 12 is in the middle of epoch 2
            raise KeyboardInterrupt
        return real_step(self, x, y)
    monkeypatch.setattr(engine.Trainer, "train_step", interrupted)
    assert main(["train", "--out", str(cut), *common]) == 130
    _, meta = read_checkpoint(cut / "last.safetensors")
    assert (meta["epoch"], meta["step"]) == (1, 11)  # a mid-epoch checkpoint
    monkeypatch.setattr(engine.Trainer, "train_step", real_step)
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    for name in ("last.safetensors", "best.safetensors"):
        a, b = read_checkpoint(ref / name)[0], read_checkpoint(cut / name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ha = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [(h["train_loss"], h["val_top1"]) for h in ha] == [(h["train_loss"], h["val_top1"]) for h in hb]


def test_without_a_validation_split_nothing_is_selected_on_test(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-progress", *TINY,
                 "data.val_size=0", "train.epochs=2", "train.eval_every=1"]) == 0
    text = capsys.readouterr().out
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("test (monitoring)" in e and " val " not in e for e in epochs)
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(h["eval_split"] == "test" for h in hist)
    results = json.loads((out / "results.json").read_text())
    assert results["weights"] == "final"
    best, last = read_checkpoint(out / "best.safetensors")[0], read_checkpoint(out / "last.safetensors")[0]
    assert all(torch.equal(best[k], last[k]) for k in best)  # "best" is the final model, not a test pick
    assert main(["report", str(out)]) == 0


# ------------------------------------------------------------------------------------------ image folders
def test_image_folder_problems(tmp_path, monkeypatch, capsys):
    from resnetlab.data import load_image_folder
    root = tmp_path / "f"
    for c in ("a", "b"):
        for i in range(3):
            png(root / c / f"{i}.png", seed=i)
    (root / "empty").mkdir()
    with pytest.warns(UserWarning, match="ignored 1 class folder"):
        train, test = load_image_folder(root, split=0.34, progress=False)
    assert train.classes == ["a", "b"] and len(train) + len(test) == 6
    single = tmp_path / "single"
    for c in ("a", "b", "c"):
        png(single / c / "0.png")
    with pytest.raises(UserError, match="too few images per class to hold out a test split"):
        load_image_folder(single, progress=False)
    from PIL import Image as PILImage
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # any 32x32 image is now a "bomb"
    with pytest.raises(UserError, match="decompression bomb"):  # another size: a new cache, decoded now
        load_image_folder(root, size=16, strict=True, progress=False)


# -------------------------------------------------------------------------------------------- downloads
def _archive_bytes(tiny_cifar: Path, tmp_path: Path) -> bytes:
    arch = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(arch, "w:gz") as tar:
        tar.add(tiny_cifar / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return arch.read_bytes()


def test_download_edge_cases(tiny_cifar, tmp_path, serve_files, capsys):
    from resnetlab.download import fetch
    body = _archive_bytes(tiny_cifar, tmp_path)
    import hashlib
    md5 = hashlib.md5(body).hexdigest()
    server = serve_files({"f.tar.gz": body})
    done = tmp_path / "complete" / "f.tar.gz"
    done.parent.mkdir()
    done.with_name("f.tar.gz.part").write_bytes(body)  # a .part that is already complete → HTTP 416
    assert fetch(f"{server.url}/f.tar.gz", done, md5, "md5", progress=False).read_bytes() == body
    half = tmp_path / "half" / "f.tar.gz"
    half.parent.mkdir()
    half.with_name("f.tar.gz.part").write_bytes(body[:1000])  # resumed with a Range request
    assert fetch(f"{server.url}/f.tar.gz", half, md5, "md5", progress=False).read_bytes() == body
    assert server.requests[-1][1] == "bytes=1000-"
    short = serve_files({"f.tar.gz": body}, cut_after=500)
    with pytest.raises(UserError, match="ended after 500 of"):
        fetch(f"{short.url}/f.tar.gz", tmp_path / "short.tar.gz", md5, "md5", progress=False)
    assert not (tmp_path / "short.tar.gz").exists()
    assert main(["download", "cifar10", "--data-dir", str(tmp_path / "d"), "--url", "ht!tp://bad url"]) == 2
    assert "is not a valid URL" in one_line_error(capsys)
    assert main(["download", "cifar10", "--data-dir", str(tmp_path / "d"), "--url", "no-scheme"]) == 2
    assert "not a valid URL" in one_line_error(capsys)


def test_train_downloads_missing_cifar(tiny_cifar, tmp_path, serve_files, monkeypatch, capsys):
    body = _archive_bytes(tiny_cifar, tmp_path)
    server = serve_files({"cifar-10-binary.tar.gz": body})
    monkeypatch.setenv("RESNETLAB_CIFAR_MIRROR", server.url)
    root = tmp_path / "fresh-data"
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(root), "--out", str(out), "--no-progress", *TINY,
                 "train.epochs=1"]) == 0
    assert "downloading the official binary archive" in capsys.readouterr().out
    assert (root / "cifar-10-batches-bin" / "test_batch.bin").is_file() and (out / "results.json").is_file()
    monkeypatch.setenv("RESNETLAB_CIFAR_MIRROR", "http://127.0.0.1:9")  # nothing listens: "offline"
    assert main(["train", "--data-dir", str(tmp_path / "other"), "--out", str(tmp_path / "run2"),
                 "--no-progress", *TINY]) == 2
    assert "offline?" in one_line_error(capsys)
    assert not (tmp_path / "run2").exists()
