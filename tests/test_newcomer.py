"""What a new user trips on (issue 52): every option explained with its default, every recipe key's meaning shown,
imbalanced folders, the learning-rate finder, predict/eval/info on what `load` takes."""
from __future__ import annotations

import argparse
import re

import pytest

from resnetlab.cli import build_parser, main


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser, action) of every argument of every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert name in helped, f"`resnetlab {' '.join(path + (name,))}` has no help line"
                yield from _options(sub, path + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


def test_every_option_of_every_command_has_help_and_shows_its_default():
    seen = 0
    for path, parser, action in _options(build_parser()):
        where = f"resnetlab {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{where}: no help"
        seen += 1
        if action.default in (None, False, [], argparse.SUPPRESS):
            continue
        text = " ".join(parser.format_help().split())
        assert f"default: {action.default}" in text or f"default {action.default}" in text, (
            f"{where}: its default {action.default!r} is not in the help")
    assert seen > 80


def test_help_names_the_defaults_users_asked_about(capsys):
    for argv, expected in ((["finetune", "--help"], "two-stage in finetune_cifar100_subset"),
                           (["serve", "--help"], "(default: 8000)"),
                           (["export", "--help"], "(default: 512)")):
        with pytest.raises(SystemExit):
            main(argv)
        assert expected in " ".join(capsys.readouterr().out.split()), argv


def test_every_recipe_key_says_what_it_means(capsys):
    from resnetlab.training.config import recipe_key, recipe_keys
    missing = [k.name for k in recipe_keys() if not k.help]
    assert not missing, f"recipe keys without help: {missing}"
    assert main(["recipes", "keys"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("train.epochs "))
    assert "after finetune.stage1_epochs" in line
    from resnetlab.cli.finetune import STRATEGIES
    assert tuple(recipe_key("finetune.strategy").choices) == STRATEGIES


@pytest.fixture(scope="module")
def exported(small_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    assert main(["export", str(small_checkpoint), "--out", str(out)]) == 0
    return out


def test_predict_eval_and_info_take_what_load_takes(small_checkpoint, exported, real_data, tmp_path, capsys):
    """An .onnx file from export: predict gives the checkpoint's answers, eval its figures on the same split."""
    import json

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    capsys.readouterr()
    answers = []
    for model in (small_checkpoint, exported):
        assert main(["predict", str(model), str(tmp_path), "--json", "--device", "cpu"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    for a, b in zip(*answers):
        assert a["top"][0]["class"] == b["top"][0]["class"]
        assert abs(a["top"][0]["prob"] - b["top"][0]["prob"]) < 2e-3
    assert main(["eval", str(small_checkpoint), "--data", "cifar10", "--full-test"]) == 2
    assert "--full-test is for the run's own test split" in capsys.readouterr().err
    assert main(["eval", str(exported)]) == 2  # an export carries no data paths: it says what to give
    assert "has no test split of its own; evaluate it on --data cifar10" in capsys.readouterr().err
    from resnetlab.data.cifar import load_cifar
    test = load_cifar(real_data, split="test")
    folder = tmp_path / "held-out"
    for i in range(300):  # CIFAR-10 test images as a folder named by the classes
        (folder / test.classes[test.labels[i]]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(folder / test.classes[test.labels[i]] / f"{i}.png")
    figures = []
    for model in (small_checkpoint, exported):
        assert main(["eval", str(model), "--data", str(folder), "--json"]) == 0
        figures.append(json.loads(capsys.readouterr().out))
    assert figures[0]["n"] == figures[1]["n"] == 300 and abs(figures[0]["top1"] - figures[1]["top1"]) <= 2 / 300
    assert main(["eval", str(small_checkpoint), "--full-test", "--data-dir", str(real_data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10_000  # the run trained on data.subset=2000
    assert main(["predict", str(exported), str(tmp_path), "--explain", str(tmp_path / "cams")]) == 2
    assert "explanations need the PyTorch model" in capsys.readouterr().err and not (tmp_path / "cams").exists()
    for model, kind in ((small_checkpoint, "safetensors checkpoint"), (exported, "ONNX graph")):
        assert main(["info", str(model)]) == 0
        text = capsys.readouterr().out
        assert kind in text and "10: airplane, automobile, bird" in text and "32 px" in text
        assert re.search(r"^metrics +val top-1 0\.\d+|^metrics +test top-1", text, re.M) and "mean [0.49" in text
        assert bool(re.search(r"^data +cifar10", text, re.M)) == (model == small_checkpoint)  # exports: no paths
    assert main(["info", str(small_checkpoint.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "resnet20"


def _imbalanced_folder(root, sizes: dict[str, int], seed: int = 0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, n in sizes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


TINY_FOLDER = ["model.name=resnet20", "train.epochs=1", "train.batch_size=8", "train.precision=fp32",
               "data.val_size=0", "data.test_fraction=0.25", "data.image_size=16", "train.tta=false"]


def test_an_imbalanced_folder_warns_and_the_remedies_silence_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    folder = _imbalanced_folder(tmp_path / "f", {"cat": 20, "dog": 20, "fox": 6})
    base = ["train", "--no-progress", "data.dataset=folder", f"data.path={folder}", *TINY_FOLDER]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "split is imbalanced" in x]  # a warning: stderr
    assert len(lines) == 1 and lines[0].startswith("warning: the training split is imbalanced: 15 images in its "
                                                   "largest class, 4 in its smallest (3.8x; smallest: fox (4)")
    for remedy in ("train.class_weights=balanced", "data.order=balanced"):
        assert main(base + ["--out", str(tmp_path / remedy), remedy]) == 0
        assert "split is imbalanced" not in capsys.readouterr().err
    balanced = _imbalanced_folder(tmp_path / "b", {"cat": 12, "dog": 10, "fox": 8})  # 1.5x: no warning
    assert main(["train", "--no-progress", "data.dataset=folder", f"data.path={balanced}", *TINY_FOLDER,
                 "--out", str(tmp_path / "c")]) == 0
    assert "split is imbalanced" not in capsys.readouterr().err


def test_balanced_class_weights_and_the_balanced_order():
    import torch
    from resnetlab.data import BatchLoader, ImageSet
    from resnetlab.training.engine import balanced_class_weights
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    w = balanced_class_weights(labels, 4)
    assert torch.allclose(w, torch.tensor([100 / (3 * 60), 100 / (3 * 30), 100 / (3 * 10), 0.0]))
    data = ImageSet(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), labels, ["a", "b", "c"])
    loader = BatchLoader(data, 10, (0.5,) * 3, (0.25,) * 3, train=True, seed=3, order="balanced")
    again = BatchLoader(data, 10, (0.5,) * 3, (0.25,) * 3, train=True, seed=3, order="balanced")
    assert torch.equal(loader.epoch_order(0), again.epoch_order(0))  # a function of (seed, epoch): exact resume
    assert not torch.equal(loader.epoch_order(0), loader.epoch_order(1))
    drawn = torch.cat([labels[loader.epoch_order(e)] for e in range(30)])
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert len(loader.epoch_order(0)) == 100 and torch.allclose(share, torch.full((3,), 1 / 3).double(), atol=0.03)


def test_the_suggestion_is_the_steepest_fall_of_the_smoothed_loss():
    import math

    import numpy as np
    from resnetlab.lr_sweep import smooth, steepest
    lrs = list(np.logspace(-6, 1, 120))
    # a loss that falls from 2.3 to 0.3 around lr = 1e-3 (in log lr), then blows up past 1
    losses = [0.3 + 2.0 / (1 + math.exp(3 * (math.log10(lr) + 3))) + (max(0.0, math.log10(lr)) * 50) ** 2
              for lr in lrs]
    from resnetlab.lr_sweep import running
    assert running([4.0, 2.0])[0] == 4.0  # debiased: the first value is the first loss
    assert smooth([1.0] * 10 + [5.0] * 10)[9] < 5.0 < smooth([1.0] * 10 + [5.0] * 10)[-1] + 1e-9  # centred
    assert steepest(lrs, losses) == pytest.approx(1e-3, rel=0.15)
    assert steepest(lrs, [1.0] * 120) is None  # a curve that never falls has no suggestion


def test_lr_find_suggests_a_rate_that_trains_better_than_far_smaller_ones(tiny_cifar, tmp_path, capsys):
    """On a learnable task the suggested rate lowers the loss within a short run where 1/100 of it barely moves
    it; the sweep writes its curve."""
    import json
    common = ["--data-dir", str(tiny_cifar), "--no-verify", "model.name=resnet20", "train.batch_size=20",
              "train.precision=fp32", "data.val_size=0", "optim.name=sgd", "data.augment.epoch_sizes=[]",
              "train.tta=false"]
    assert main(["lr-find", "--recipe", "cifar10_resnet20_paper", "--out", str(tmp_path / "lr"), "--steps", "60",
                 "--start", "1e-5", "--no-progress", *common]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("suggested: optim.lr="))
    lr = float(line.split("=")[1].split(";")[0])
    assert 1e-4 < lr < 10 and (tmp_path / "lr" / "lr_find.png").is_file()
    assert len((tmp_path / "lr" / "lr_find.csv").read_text().splitlines()) > 20
    losses = {}
    for name, rate in (("suggested", lr), ("small", lr / 100)):
        run = tmp_path / name
        assert main(["train", "--recipe", "cifar10_resnet20_paper", "--out", str(run), "--no-progress", *common,
                     "train.epochs=3", "schedule.name=constant", f"optim.lr={rate}"]) == 0
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[name] = rows[-1]["train_loss"]
    assert losses["suggested"] < losses["small"] - 0.1, losses


def test_bf16_on_a_cpu_without_it_says_so_and_tta_figures_are_labelled(tiny_cifar, tmp_path, capsys, monkeypatch):
    import json

    import torch
    from resnetlab import runtime
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(UserWarning, match="bf16 on a CPU without native bf16 .* train.precision=auto picks fp32"):
        assert runtime.select_precision("bf16", torch.device("cpu")) is torch.bfloat16
    out = tmp_path / "run"
    assert main(["train", "--recipe", "cifar10_resnet20_paper", "--data-dir", str(tiny_cifar), "--no-verify",
                 "--out", str(out), "--no-progress", "train.epochs=1", "train.batch_size=40", "data.val_size=0",
                 "train.precision=bf16", "train.tta=true", "train.tta_shift=1"]) == 0
    captured = capsys.readouterr()
    warned = [x for x in captured.err.splitlines() if "native bf16" in x]
    assert len(warned) == 1 and warned[0].startswith("warning: train.precision=bf16 on a CPU without native bf16")
    final = next(x for x in captured.out.splitlines() if x.startswith("test (final weights)"))
    results = json.loads((out / "results.json").read_text())
    plain = results["test_plain"]["top1"]
    assert f"with TTA (6 views: flips, +-1 px; {plain:.4f} without)" in final and results["tta"].startswith("6 views")


def test_a_folder_smaller_than_one_batch_is_refused_before_the_feature_pass(pretrained_small, image_folder,
                                                                             tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--weights", str(pretrained_small), "--data", str(image_folder), "--out", str(out),
                 "--no-progress", "train.precision=fp32"]) == 2
    captured = capsys.readouterr()
    assert "fewer than one batch (train.batch_size 128); lower train.batch_size" in captured.err
    assert "features:" not in captured.out and not out.exists()


@pytest.fixture
def pretrained_small(tmp_path):
    import resnetlab
    from resnetlab.training.runner import model_meta
    from resnetlab.weights import save_checkpoint
    meta = model_meta("resnet20", {}, [f"c{i}" for i in range(10)], (0.5,) * 3, (0.25,) * 3, 32, None)
    path = tmp_path / "pre.safetensors"
    save_checkpoint(path, resnetlab.create_model("resnet20").state_dict(), meta.to_dict())
    return path


def test_a_second_run_on_a_cached_folder_reads_its_split_statistics_instead_of_every_image(tmp_path, monkeypatch):
    import json

    from resnetlab.data import loader
    from resnetlab.data.folders import load_image_folder
    from resnetlab.training.config import DataConfig
    from resnetlab.training.runner import load_splits
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    folder = _imbalanced_folder(tmp_path / "f", {"a": 12, "b": 12, "c": 12})
    calls = []
    real = loader.channel_stats
    monkeypatch.setattr(loader, "channel_stats", lambda ds, *a: calls.append(len(ds)) or real(ds, *a))
    cfg = DataConfig(dataset="folder", path=str(folder), image_size=16, val_size=0.2, test_fraction=0.25)
    quiet = dict(progress=False, log=lambda *a, **k: None)
    first = load_splits(cfg, None, **quiet)
    second = load_splits(cfg, None, **quiet)
    assert calls == [len(first.train)] and (first.mean, first.std) == (second.mean, second.std)
    assert (first.mean, first.std) == real(first.train)
    other = load_splits(DataConfig(dataset="folder", path=str(folder), image_size=16, val_size=0.2,
                                   test_fraction=0.25, split_seed=1), None, **quiet)  # another split: computed
    assert len(calls) == 2 and other.train.cache == first.train.cache
    stats = first.train.cache / "stats.json"
    tampered = {k: {"mean": [float("nan")] * 3, "std": [2, 2, 2]} for k in json.loads(stats.read_text())}
    stats.write_text(json.dumps(tampered))
    assert load_splits(cfg, None, **quiet).mean == first.mean and len(calls) == 3  # refused, computed again
    train, _ = load_image_folder(folder, size=16, split=0.25, progress=False, log=lambda *a: None)
    assert train.cache is not None


def test_reports_of_many_classes_list_the_most_confused_pairs_and_plot_points_and_the_lr(tmp_path, monkeypatch):
    import json

    import matplotlib.axes
    import torch
    from resnetlab.evaluation.metrics import EvalResult
    from resnetlab.evaluation.report import write_confusion, write_report
    run = tmp_path / "run"
    run.mkdir()
    classes = [f"k{i:02d}" for i in range(45)]
    cm = torch.eye(45, dtype=torch.long) * 10
    cm[3, 7], cm[12, 5], cm[40, 41] = 9, 4, 6
    write_confusion(EvalResult(0.5, 0.9, 1.0, int(cm.sum()), cm), classes, run / "confusion")
    assert (run / "confusion.csv").is_file() and not (run / "confusion.png").exists()
    (run / "results.json").write_text(json.dumps({"model": "resnet20", "test": {"top1": 0.5, "top5": 0.9},
                                                  "params": 1, "macs": 1, "train_time_min": 0.1, "img_per_s": 1,
                                                  "device": "cpu"}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.3,
                                                   "eval_split": "test", "val_loss": 2.1, "val_top1": 0.5}) + "\n")
    plotted = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: plotted.append(k) or real_plot(self, *a, **k))
    text = write_report(run).read_text()
    assert "## Most confused pairs" in text and "45 classes, too many for a readable confusion image" in text
    rows = [x for x in text.splitlines() if x.startswith("| run | k")]
    assert rows[:3] == ["| run | k03 | k07 | 9 | 47 % |", "| run | k40 | k41 | 6 | 38 % |",
                        "| run | k12 | k05 | 4 | 29 % |"]
    assert len(plotted) == 5 and all(k.get("marker") == "o" for k in plotted)  # train/eval loss, acc, and the lr


def test_mlflow_logs_the_recipe_each_epoch_and_the_results_into_one_run_that_resume_continues(tiny_cifar, tmp_path,
                                                                                             monkeypatch):
    pytest.importorskip("mlflow")
    import json
    monkeypatch.chdir(tmp_path)

    from mlflow.tracking import MlflowClient
    out = tmp_path / "runs" / "tracked"
    common = ["--data-dir", str(tiny_cifar), "--no-verify", "--no-progress", "model.name=resnet20",
              "train.batch_size=40", "train.precision=fp32", "data.val_size=40", "optim.name=sgd",
              "data.augment.epoch_sizes=[]", "train.tta=false"]
    assert main(["train", "--recipe", "cifar10_resnet20_paper", "--out", str(out), *common, "train.epochs=1",
                 "train.mlflow=local"]) == 0
    assert main(["train", "--resume", str(out), "--no-progress", "train.epochs=2"]) == 0  # extended: same run
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(json.loads((out / "mlflow.json").read_text())["run_id"])
    assert run.data.params["optim.lr"] == "0.1" and run.data.params["model.name"] == "resnet20"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
    results = json.loads((out / "results.json").read_text())
    assert run.data.metrics["test_top1"] == pytest.approx(results["test"]["top1"])
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
    assert "results.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # beside the store, not in the working folder


def test_python_resume_continues_an_interrupted_run_and_lr_find_returns_its_sweep(tiny_cifar, tmp_path, monkeypatch):
    import resnetlab
    from resnetlab.errors import RunInterrupted
    from resnetlab.training import engine
    quiet = dict(log=lambda *a, **k: None)
    overrides = {"model.name": "resnet20", "train.batch_size": 40, "train.precision": "fp32", "data.val_size": 40,
                 "data.verify": False, "train.epochs": 2, "train.tta": False}
    real_step, calls = engine.Trainer.train_step, {"n": 0}

    def interrupted(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2 (4 steps an epoch)
            raise KeyboardInterrupt
        return real_step(self, x, y)
    monkeypatch.setattr(engine.Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        resnetlab.train("cifar10_resnet20_paper", out=out, data_dir=tiny_cifar, overrides=overrides, **quiet)
    monkeypatch.setattr(engine.Trainer, "train_step", real_step)
    assert resnetlab.resume(out, **quiet)["epochs"] == 2
    sweep = resnetlab.lr_find("cifar10_resnet20_paper", out=tmp_path / "lr", data_dir=tiny_cifar, steps=30,
                              start=1e-4, overrides=overrides, **quiet)
    assert len(sweep.lrs) == len(sweep.losses) > 0 and (tmp_path / "lr" / "lr_find.png").is_file()
