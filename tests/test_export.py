"""`resnetlab export`: ONNX (checked with onnxruntime) and torch.export programs of a trained checkpoint."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resnetlab import load
from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.data.cifar import load_cifar
from resnetlab.inference import export as export_mod
from resnetlab.inference.export import load_exported_program


def _check_line(out: str) -> tuple[float, float]:
    line = next(ln for ln in out.splitlines() if "max abs logit difference" in ln)
    diff = float(line.split("difference ")[1].split()[0])
    agree = float(line.split("agreement ")[1].rstrip("%")) / 100
    return diff, agree


def test_onnx_export_matches_pytorch_and_carries_its_metadata(small_checkpoint, real_data, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(small_checkpoint), "--out", str(out), "--check-count", "300"]) == 0
    printed = capsys.readouterr().out
    diff, agree = _check_line(printed)
    assert diff <= 1e-4 and agree == 1.0 and "300 images of its test split" in printed
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["resnetlab"])
    clf = load(small_checkpoint, device="cpu")
    assert meta["classes"] == clf.classes == json.loads(props["classes"])
    assert meta["mean"] == list(clf.metadata.mean) and meta["input_size"] == 32 == int(props["input_size"])
    # dynamic batch axis: the same file runs at batch 1 and 37
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    test = load_cifar(real_data, "cifar10", "test")
    x = export_mod.check_images_input(test.images[600:637], clf.metadata)
    with torch.no_grad():
        ref = clf.model(x).numpy()
    for batch in (x[:1], x):
        got = session.run(None, {"input": batch.numpy()})[0]
        assert got.shape == (len(batch), 10) and np.abs(got - ref[:len(batch)]).max() <= 1e-4
    # the ONNX backend of the Python API predicts what the PyTorch one does
    onnx_clf = load(out)
    assert onnx_clf.backend == "onnx" and onnx_clf.classes == clf.classes
    a, b = onnx_clf.predict(test.images[600:637]), clf.predict(test.images[600:637])
    assert [r["top"][0]["class"] for r in a] == [r["top"][0]["class"] for r in b]
    assert max(abs(p["top"][0]["prob"] - q["top"][0]["prob"]) for p, q in zip(a, b)) < 1e-4


def test_torch_export_program_matches_pytorch(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main(["export", str(small_checkpoint), "--format", "export", "--out", str(out),
                 "--check-count", "200"]) == 0
    diff, agree = _check_line(capsys.readouterr().out)
    assert diff <= 1e-4 and agree == 1.0
    weights = small_checkpoint.stat().st_size  # the archive holds the weights, the graph and a 2-image example,
    assert out.stat().st_size < weights + 500_000, (out.stat().st_size, weights)  # not the 200 check images
    import zipfile
    roots = {name.split("/")[0] for name in zipfile.ZipFile(out).namelist()}
    assert roots == {"archive"}, roots  # not the name of the temporary file it was written to
    module, meta = load_exported_program(out)
    clf = load(small_checkpoint, device="cpu")
    assert meta.classes == clf.classes
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module(x), clf.model(x), atol=1e-4)


def test_export_checks_on_given_image_files(small_checkpoint, real_data, tmp_path, capsys):
    from conftest import png_bytes
    test = load_cifar(real_data, "cifar10", "test")
    for i in range(20):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(test.images[i].permute(1, 2, 0).numpy()))
    assert main(["export", str(small_checkpoint), "--out", str(tmp_path / "x.onnx"), "--images", str(tmp_path)]) == 0
    assert "on 20 given images" in capsys.readouterr().out


def test_export_that_fails_its_check_writes_nothing(small_checkpoint, tmp_path, capsys, monkeypatch):
    real = export_mod._run_onnx
    monkeypatch.setattr(export_mod, "_run_onnx", lambda path, x: real(path, x) + 1e-3)  # a runtime that drifts
    out = tmp_path / "bad.onnx"
    assert main(["export", str(small_checkpoint), "--out", str(out), "--check-count", "50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match PyTorch" in err and "nothing written" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--opset", "3"], "--opset must be between 7 and 23"),
    (["--out", "/nonexistent-dir/m.onnx"], "no such folder for --out"),
    (["--check-count", "0"], "--check-count must be positive"),
])
def test_export_bad_options_one_line(small_checkpoint, args, message, capsys):
    assert main(["export", str(small_checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_export_of_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.safetensors")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture(scope="module")
def confident_checkpoint(tmp_path_factory):
    """resnet20 trained to high accuracy on learnable synthetic CIFAR-format data (confident predictions, as a
    deployable model has; the 1-epoch real-data checkpoint sits at 23 % and its int8 copy is rightly refused)."""
    from conftest import write_cifar10_bin
    root = tmp_path_factory.mktemp("confident")
    write_cifar10_bin(root / "data", per_file=300)
    assert main(["train", "--data-dir", str(root / "data"), "--out", str(root / "run"), "--no-progress",
                 "data.verify=false", "model.name=resnet20", "train.epochs=5", "train.batch_size=50", "optim.lr=0.05",
                 "data.val_size=0", "train.precision=fp32", "train.tta=false"]) == 0
    return root / "run" / "best.safetensors"


def test_int8_export_passes_its_check_and_loads(confident_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(confident_checkpoint), "--int8", "--calibration", "256", "--out", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "agrees with float" in ln)
    agree = float(line.split("float on ")[1].split("%")[0]) / 100
    fp32, int8 = (float(x.split("%")[0]) for x in line.split("top-1 float ")[1].split(", int8 "))
    assert agree >= 0.99 and fp32 - int8 <= 0.5 and fp32 > 90, line
    model = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # QDQ: the graph really is int8
    # the first conv reads the float input itself (kept in float); every later conv reads dequantized int8
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    assert convs[0].input[0] == "input" and all(made_by.get(c.input[0]) == "DequantizeLinear" for c in convs[1:])
    meta = json.loads({p.key: p.value for p in model.metadata_props}["resnetlab"])
    assert meta["quantization"]["calibration_images"] == 256
    # resnetlab.load takes the int8 file: the same API, and the float model's answers
    clf8, clf = load(out), load(confident_checkpoint, device="cpu")
    images = torch.from_numpy(__import__("conftest").synthetic_images(100, seed=77)[0])
    a = [r["top"][0]["class"] for r in clf8.predict(images)]
    b = [r["top"][0]["class"] for r in clf.predict(images)]
    assert clf8.backend == "onnx" and np.mean([x == y for x, y in zip(a, b)]) >= 0.97
    # without VNNI, ONNX Runtime's uint8 x int8 kernels saturate; the session asks for its exact ones
    assert clf8.session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"


def test_int8_export_that_fails_its_check_writes_nothing(small_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_mod, "INT8_MIN_AGREEMENT", 1.01)  # no model can pass: the refusal path
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(small_checkpoint), "--int8", "--calibration", "32", "--check-count", "64",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing written" in err and "\n" not in err and not out.exists()
    # more calibration images than the training split holds: it says it calibrates on all of them (and does)
    seen = []

    def stop_at_calibration(path, calibration, *a, **k):
        seen.append(len(calibration))
        raise UserError("stopped here")
    monkeypatch.setattr(export_mod, "export_int8", stop_at_calibration)
    assert main(["export", str(small_checkpoint), "--int8", "--calibration", "1000000000", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "--calibration 1000000000: the training split has 2000 images; calibrating on all of them" in captured.out
    assert seen == [2000]
    assert main(["export", str(small_checkpoint), "--int8", "--format", "export"]) == 2
    assert "--int8 needs --format onnx" in capsys.readouterr().err


def _with_trained_bn_statistics(model: torch.nn.Module, seed: int, negative_first: bool = False) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) * 2 + 0.1
            m.bias.data = torch.randn(n, generator=g)
            m.running_mean = torch.randn(n, generator=g)
            m.running_var = torch.rand(n, generator=g) * 4 + 0.05
            if negative_first:
                m.weight.data[0] = -0.5
    return model.eval()


def test_pool_first_batchnorm_folds_into_its_conv_without_changing_the_output():
    from resnetlab.models import build_model
    model = _with_trained_bn_statistics(build_model("resnet9", 10, {"widths": [8, 16, 16, 32],
                                                                                "pool_first": True}), seed=0)
    folded, n = export_mod.fold_for_quantization(model)
    assert n == 3  # the three conv → pool → BN → ReLU runs of the pool-first ResNet-9
    pairs = [(a, b) for s in folded.modules() if isinstance(s, torch.nn.Sequential) for a, b in zip(s, list(s)[1:])]
    assert not any(isinstance(a, torch.nn.MaxPool2d) and isinstance(b, torch.nn.BatchNorm2d) for a, b in pairs)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left as it was


def test_pool_first_batchnorm_with_a_negative_scale_is_not_folded():
    from resnetlab.models import build_model
    model = _with_trained_bn_statistics(build_model("resnet9", 10, {"widths": [8, 16, 16, 32],
                                                                                "pool_first": True}), seed=1, negative_first=True)
    folded, n = export_mod.fold_for_quantization(model)
    assert n == 0  # max-pool does not commute with a negative scale: folding would change the answers
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_whitening_conv_and_the_prep_conv_fold_into_one_conv_with_the_same_answers():
    from resnetlab.models import build_model
    model = build_model("resnet9", 10, {"widths": [8, 16, 16, 32], "pool_first": True, "whiten": True})
    model.init_whitening(torch.randn(64, 3, 32, 32))
    model = _with_trained_bn_statistics(model, seed=2)
    folded, n = export_mod.fold_for_quantization(model)
    assert n == 4 and folded.whiten is None and model.whiten is not None  # whitening + three pool-first runs
    assert folded.prep[0].kernel_size == (3, 3) and folded.prep[0].in_channels == 3
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
