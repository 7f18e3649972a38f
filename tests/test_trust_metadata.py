"""Trust, part 3 (the parts that read metadata): what a checkpoint or an exported graph says is checked as data
(finite numbers, the graph's own shapes), and a file's metadata never chooses where resnetlab downloads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.models import load_model
from resnetlab.weights import read_checkpoint, save_checkpoint

META = {"arch": "resnet20", "kwargs": {}, "num_classes": 10, "classes": [f"c{i}" for i in range(10)],
        "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("change,message", [
    ({"mean": [float("nan"), 0.5, 0.5]}, "metadata 'mean' must be a list of 3 finite numbers"),
    ({"std": [float("inf"), 0.25, 0.25]}, "metadata 'std' must be a list of 3 finite numbers"),
])
def test_non_finite_normalisation_in_a_checkpoint_is_refused(tmp_path, change, message):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, resnetlab.create_model("resnet20").state_dict(), dict(META, **change))
    with pytest.raises(UserError, match=message):
        load_model(path)


@pytest.mark.parametrize("override", ["train.epochs=1e400", "train.epochs=.nan", "data.subset=1e400",
                                      "optim.lr=.inf", "optim.lr=" + "9" * 400])
def test_non_finite_recipe_values_are_one_line(tmp_path, capsys, override):
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", override]) == 2
    key = override.split("=")[0]
    err = one_line_error(capsys)
    assert f"recipe key {key}:" in err and ("expected" in err or "must be" in err) and not (tmp_path / "run").exists()


def test_a_checkpoints_recipe_with_infinite_epochs_is_one_line_naming_the_file(small_checkpoint, tmp_path, capsys):
    weights, meta = read_checkpoint(small_checkpoint)
    meta["recipe"]["train"]["epochs"] = float("inf")
    path = tmp_path / "inf.safetensors"
    save_checkpoint(path, weights, meta)
    assert main(["eval", str(path)]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "train.epochs: expected an integer" in err


def test_finetune_checks_the_weights_metadata_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, resnetlab.create_model("resnet20").state_dict(), dict(META, input_size=0))
    out = tmp_path / "run"
    assert main(["finetune", "--weights", str(path), "--data", "cifar10", "--out", str(out), "--no-progress"]) == 2
    assert "metadata 'input_size' must be an integer between 8 and 4096" in one_line_error(capsys)
    assert not out.exists()


def test_the_recorded_data_root_never_chooses_where_eval_downloads(small_checkpoint, real_data, tmp_path, capsys,
                                                                    monkeypatch):
    """Metadata pointing at a folder without the data: eval reads the documented root ($RESNETLAB_DATA) and
    downloads nothing, and the recorded folder stays untouched."""
    from resnetlab.data import cifar
    weights, meta = read_checkpoint(small_checkpoint)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    meta["dataset"]["data_dir"] = str(elsewhere)
    path = tmp_path / "steer.safetensors"
    save_checkpoint(path, weights, meta)
    monkeypatch.setenv("RESNETLAB_DATA", str(real_data))
    monkeypatch.setattr(cifar, "download", lambda *a, **k: pytest.fail(f"downloaded {a}"))
    assert main(["eval", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 400 and list(elsewhere.iterdir()) == []  # its 2,000-image slice
    # and where the recorded root does hold the data (the run's own, as written), it is read there
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "nothing-here"))
    assert main(["eval", str(small_checkpoint), "--json"]) == 0


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from resnetlab.inference.export import export
    from resnetlab.training.runner import model_meta
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = resnetlab.create_model("resnet20", num_classes=10).eval()
    meta = model_meta("resnet20", {}, [f"c{i}" for i in range(10)], (0.5,) * 3, (0.25,) * 3, 32, None)
    save_checkpoint(root / "m.safetensors", model.state_dict(), meta.to_dict())
    path, _ = export(root / "m.safetensors", "onnx", torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8),
                     root / "m.onnx", log=lambda *a: None)
    return path


def _crafted(onnx_file: Path, tmp_path: Path, text: str) -> Path:
    import onnx
    proto = onnx.load(str(onnx_file))
    for p in proto.metadata_props:
        if p.key == "resnetlab":
            p.value = text
    out = tmp_path / "crafted.onnx"
    out.write_bytes(proto.SerializeToString())
    return out


def _deploy(onnx_file: Path) -> dict:
    import onnx
    return json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}["resnetlab"])


@pytest.mark.parametrize("make,message", [
    (lambda d: "{not json", "resnetlab metadata is not valid JSON"),
    (lambda d: json.dumps([1, 2]), "checkpoint metadata is not a mapping"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "arch"}), "no architecture metadata"),
    (lambda d: json.dumps(dict(d, input_size=0)), "'input_size' must be an integer between 8 and 4096"),
    (lambda d: json.dumps(dict(d, classes="abc")), "'classes' must be a list of 10 names"),
    (lambda d: json.dumps(dict(d, num_classes=2, classes=["a", "b"])), "does not give the 2 classes"),
    (lambda d: json.dumps(dict(d, input_size=64, resize={"mode": "squash", "decode_size": 64})),
     "is not the 'input' (N, 3, 64, 64)"),
    (lambda d: json.dumps(dict(d, mean=[None, 0, 0])), "'mean' must be a list of 3 finite numbers"),
])
def test_crafted_onnx_metadata_is_one_line_before_serving(onnx_file, tmp_path, make, message):
    crafted = _crafted(onnx_file, tmp_path, make(_deploy(onnx_file)))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        resnetlab.load(crafted)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(crafted))


def test_the_evaluation_batch_is_bounded_by_memory_at_the_input_size(small_checkpoint, tmp_path, capsys):
    """eval_batch_size 1000 at 32 px is kept; the same net read at 128 px evaluates in batches that fit the bound
    (about 6x the largest activation per image), says so, and gives the figures of the whole split."""
    from resnetlab.training.runner import EVAL_MEMORY_CPU, EVAL_PEAK_PER_ACTIVATION
    assert main(["eval", str(small_checkpoint), "--json"]) == 0
    captured = capsys.readouterr()
    assert "evaluation batch" not in captured.err and json.loads(captured.out)["n"] == 400
    weights, meta = read_checkpoint(small_checkpoint)
    meta["input_size"] = 128
    meta["resize"] = {"mode": "squash", "decode_size": 128}
    path = tmp_path / "big.safetensors"
    save_checkpoint(path, weights, meta)
    assert main(["eval", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.err.splitlines() if x.startswith("evaluation batch: "))
    batch = int(line.split()[2])
    per_image = EVAL_PEAK_PER_ACTIVATION * 16 * 128 * 128 * 4  # resnet20's widest activation: 16 x 128 x 128
    assert 1 <= batch < 1000 and batch * per_image <= EVAL_MEMORY_CPU < (batch + 1) * per_image, line
    assert "instead of train.eval_batch_size 1000" in line and json.loads(captured.out)["n"] == 400
