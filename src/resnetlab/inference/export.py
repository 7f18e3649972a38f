"""`resnetlab export`: a checkpoint as a file that runs without resnetlab.

Two formats:
- onnx: for runtimes without PyTorch (ONNX Runtime, TensorRT, OpenVINO, browsers). Dynamic batch axis;
  the checkpoint's class names, mean/std, input size and resize policy ride in the model's metadata
  (`metadata_props`), so the file alone is enough to preprocess and label.
- export: a torch.export ExportedProgram (`.pt2`) for PyTorch-only deployments. Chosen over TorchScript
  because TorchScript is deprecated upstream and no longer developed, while an ExportedProgram is the
  graph PyTorch's own deployment paths start from (AOTInductor for C++ and Python, ExecuTorch for
  mobile); it loads with `torch.export.load` and needs no resnetlab code. Like TorchScript archives it
  is loaded with pickle inside torch: treat a .pt2 as code and load only files you made.

`--int8` (onnx only): ONNX Runtime's static quantization (QDQ; per-channel int8 weights, uint8 activations
whose ranges are the 99.999th percentiles seen on training images decoded by the checkpoint's own preprocessing;
the layers folded first by `fold_for_quantization`, the first convolution left in float), written only when its
top-1 agrees with the float model on >= 99 % of the check images and loses <= 0.5 points of accuracy.

Both graphs take the normalised float input (N, 3, S, S) that resnetlab.preprocessing produces, and
give logits. Each export checks itself before it is written: the exported graph is run on real images
and compared with the PyTorch model (max abs logit difference, top-1 agreement); a file that fails the
check is not written.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_write
from ..models import CheckpointMeta, load_model
from ..models.checkpoint import Resize
from ..preprocessing import model_input
from ..weights import resolve_checkpoint
from .formats import DEFAULT_OPSET, FORMATS

MAX_ABS_DIFF = 1e-4
META_KEY = "resnetlab"  # metadata_props key (ONNX) / extra file name (pt2) holding the JSON below


@dataclass
class ExportCheck:
    images: int
    max_abs_diff: float
    top1_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.top1_agreement == 1.0


def deploy_metadata(meta: CheckpointMeta) -> CheckpointMeta:
    """What a runtime needs beside the graph: how to make its input and how to name its outputs (no recipe, no
    data paths)."""
    return CheckpointMeta(arch=meta.arch, kwargs=meta.kwargs, num_classes=meta.num_classes, classes=list(meta.classes),
                          mean=list(meta.mean), std=list(meta.std), input_size=meta.input_size, task=meta.task,
                          resize=Resize(meta.policy.input_size, meta.policy.mode), metrics=meta.metrics)


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'resnetlab[deploy]'") from None
    return onnx, onnxruntime


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str, opset: int, meta: CheckpointMeta) -> None:
    onnx, _ = _onnx_modules()
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = os.path.join(tmp, "model.onnx")
        # the exporter logs each pass at INFO/WARNING level; the user asked for one file, not a trace
        with _quiet("torch.onnx", "onnxscript", "torch.export", "torch._export"):
            try:
                torch.onnx.export(model, (example,), raw, dynamo=True, input_names=["input"],
                                  output_names=["logits"], dynamic_shapes=({0: batch},), opset_version=opset,
                                  external_data=False, verbose=False)
            except Exception as e:  # the exporter's own failure (unsupported op or opset): name it, one line
                raise UserError(f"ONNX export failed at opset {opset}: {str(e).splitlines()[0]}") from None
        proto = onnx.load(raw)
    _set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """These loggers at ERROR level for the duration (exporters and quantizers log every pass)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _set_metadata(proto, meta: CheckpointMeta) -> None:
    """What a runtime needs beside the graph, in metadata_props (the whole under META_KEY, the rest for tools)."""
    del proto.metadata_props[:]
    for key, value in {META_KEY: meta.to_deploy_json(), "classes": json.dumps(meta.classes),
                       "mean": json.dumps(meta.mean), "std": json.dumps(meta.std),
                       "input_size": str(meta.input_size)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "resnetlab"
    proto.doc_string = f"{meta.arch} exported by resnetlab; input and output: see metadata '{META_KEY}'"


def session_options(threads: int = 0):
    """The ONNX Runtime session options every resnetlab session uses (threads: 0 = ONNX Runtime's default).

    `session.x64quantprecision`: on x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) ONNX Runtime's
    fast uint8 x int8 kernels add pairs of products in int16 and saturate when weights fall outside [-64, 63];
    with this option it runs those layers with uint8 x uint8 kernels instead: on an AVX2 CPU the default net's
    int8 copy agreed with the float model on only ~71 % of the test images without it
    (docs/results/deploy.md#int8-under-onnx-runtime). CPUs with VNNI are unaffected."""
    _, ort = _onnx_modules()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.x64quantprecision", "1")
    return options


def _run_onnx(model: str | bytes, x: torch.Tensor, options=None) -> np.ndarray:
    """Logits of an ONNX model (a path or its bytes) on x, one session (options: session_options()), batches
    of 256."""
    _, ort = _onnx_modules()
    session = ort.InferenceSession(model, options or session_options(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 256].numpy()})[0] for i in range(0, len(x), 256)])


def _export_program(model: torch.nn.Module, example: torch.Tensor, path: str, meta: CheckpointMeta) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:
        raise UserError(f"torch.export failed: {str(e).splitlines()[0]}") from None
    # Saved through a buffer: given a path, the archive's inner folder would take the name of the temporary
    # file this is written to (".best.pt2.XXXX.tmp/..."); a buffer gets a neutral one.
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={f"{META_KEY}.json": meta.to_deploy_json()})
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def load_exported_program(path: str | Path) -> tuple[torch.nn.Module, CheckpointMeta]:
    """A .pt2 written by `export` (a file you made: loading one runs pickle inside torch)."""
    extra = {f"{META_KEY}.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program.module(), CheckpointMeta.from_deploy_json(extra[f"{META_KEY}.json"] or "{}", path)


def check_images_input(pixels: torch.Tensor, meta: CheckpointMeta) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) as decoded → the float input both graphs take."""
    return model_input(pixels, meta.mean, meta.std, meta.input_size).contiguous()


def example_input(x: torch.Tensor) -> torch.Tensor:
    """Two images to trace with (batch 2: the batch axis stays dynamic). A copy, not a view: torch.export stores
    the example input, and a view would store all of x (12 MB for the 1000 check images at 32 px, where the
    weights of the default net are 1.7 MB)."""
    return x[:2].clone() if len(x) >= 2 else x.repeat(2, 1, 1, 1)


def export(checkpoint: str | Path, fmt: str, pixels: torch.Tensor, out: str | Path | None = None,
           opset: int = DEFAULT_OPSET, log=print) -> tuple[Path, ExportCheck]:
    """Export, check against PyTorch on `pixels` (uint8 (N, 3, H, W), real images), write atomically."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = resolve_checkpoint(checkpoint)
    model, meta = load_model(path, "cpu")
    model = model.float().eval()
    info = deploy_metadata(meta)
    dest = Path(out) if out else path.with_suffix(FORMATS[fmt])
    if dest.resolve() == path.resolve():
        raise UserError(f"{dest}: refusing to overwrite the checkpoint itself; choose another --out")
    if not dest.parent.is_dir():
        raise UserError(f"{dest.parent}: no such folder for --out")
    if fmt == "onnx" and not 7 <= opset <= 23:
        raise UserError(f"--opset must be between 7 and 23, got {opset}")
    if len(pixels) == 0:
        raise UserError("no images to check the export with")
    x = check_images_input(pixels, info)
    with torch.no_grad():
        reference = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
    example = example_input(x)

    def write(tmp: str) -> None:
        nonlocal check
        if fmt == "onnx":
            _export_onnx(model, example, tmp, opset, info)
            got = _run_onnx(tmp, x)
        else:
            _export_program(model, example, tmp, info)
            module, _ = load_exported_program(tmp)
            with torch.no_grad():
                got = torch.cat([module(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
        check = ExportCheck(len(x), float(np.abs(got - reference).max()),
                            float((got.argmax(1) == reference.argmax(1)).mean()))
        if not check.passed:
            raise UserError(f"{fmt} export does not match PyTorch on {check.images} images: max abs logit "
                            f"difference {check.max_abs_diff:.2e} (limit {MAX_ABS_DIFF:.0e}), top-1 agreement "
                            f"{check.top1_agreement:.2%}; nothing written")

    check: ExportCheck | None = None
    atomic_write(dest, write)
    assert check is not None
    return dest, check


INT8_MIN_AGREEMENT = 0.99
INT8_MAX_LOSS = 0.005


@dataclass
class Int8Check:
    images: int
    agreement: float                 # int8 top-1 equal to float's
    fp32_top1: float | None          # accuracies when the check images have labels
    int8_top1: float | None
    calibration: int

    @property
    def passed(self) -> bool:
        loss_ok = self.fp32_top1 is None or self.fp32_top1 - self.int8_top1 <= INT8_MAX_LOSS + 1e-12
        return self.agreement >= INT8_MIN_AGREEMENT and loss_ok


def fold_for_quantization(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """An eval-mode copy of `model` with the same answers and fewer layers for a quantizer to round, and how many
    folds were made: the family's own `fold_for_inference()` (the model contract), then each conv → max-pool →
    BN → ReLU run (the pool-first order of the default net) becomes conv with the BN folded in → ReLU → max-pool.

    The second is exact whenever every BN channel scale is positive (max-pooling commutes with a positive
    per-channel affine map and with ReLU); a run with a non-positive scale is left as it is. Why: ONNX Runtime
    can fold a BN only into the conv right before it, so the quantizer would otherwise give the raw conv output,
    whose channels differ in range by the BN's scales, one uint8 scale for all of them."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from ..models.contract import ClassifierNet
    model = copy.deepcopy(model).eval()
    folded = model.fold_for_inference() if isinstance(model, ClassifierNet) else 0
    for seq in model.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        for i in range(len(seq) - 3):
            conv, pool, bn, relu = seq[i], seq[i + 1], seq[i + 2], seq[i + 3]
            if not (type(conv) is torch.nn.Conv2d and isinstance(pool, torch.nn.MaxPool2d)
                    and type(bn) is torch.nn.BatchNorm2d and isinstance(relu, torch.nn.ReLU)):
                continue
            if not bool((bn.weight / torch.sqrt(bn.running_var + bn.eps) > 0).all()):
                continue
            seq[i], seq[i + 1], seq[i + 2], seq[i + 3] = (fuse_conv_bn_eval(conv, bn), torch.nn.ReLU(), pool,
                                                          torch.nn.Identity())
            folded += 1
    return model, folded


def _input_convs(path: str) -> list[str]:
    """The convolutions that read the graph's input: int8 exports keep them in float. Of all layers, quantizing
    the first (its input and its weights) cost the default net the most agreement with the float model, and its
    large whitening weights were the ones that saturated on CPUs without VNNI (docs/results/deploy.md)."""
    onnx, _ = _onnx_modules()
    graph = onnx.load(path).graph
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a float tensor, in batches, with the ranged reading
    (`__len__`, `set_range`) its `CalibStridedMinMax` option uses to calibrate a stride of batches at a time."""

    def __init__(self, x: torch.Tensor, batch: int = 32) -> None:
        self.batches = [{"input": x[i:i + batch].numpy()} for i in range(0, len(x), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.todo = iter(self.batches[start_index:end_index])

    def get_next(self):
        return next(self.todo, None)


def export_int8(checkpoint: str | Path, calibration: torch.Tensor, pixels: torch.Tensor,
                labels: torch.Tensor | None = None, out: str | Path | None = None,
                opset: int = DEFAULT_OPSET, require_check: bool = True,
                plain: bool = False) -> tuple[Path, Int8Check]:
    """An int8 ONNX model: float export, static QDQ quantization calibrated on `calibration` (uint8 training
    pixels), checked on `pixels` (uint8, with `labels` when known) against the float model; written atomically
    only when the check passes (require_check=False: written whatever the check says — for timing models
    without trained weights in benchmarks, never for deployment). plain=True quantizes every convolution of the
    unfolded model (for benchmarks that measure what fold_for_quantization and the float first layer buy)."""
    onnx, _ = _onnx_modules()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    path = resolve_checkpoint(checkpoint)
    model, meta = load_model(path, "cpu")
    model = model.float().eval() if plain else fold_for_quantization(model.float())[0]
    info = deploy_metadata(meta)
    dest = Path(out) if out else path.with_suffix(".int8.onnx")
    if not dest.parent.is_dir():
        raise UserError(f"{dest.parent}: no such folder for --out")
    if len(calibration) == 0 or len(pixels) == 0:
        raise UserError("int8 export needs calibration images and check images")
    x = check_images_input(pixels, info)
    calib = check_images_input(calibration, info)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, q = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        _export_onnx(model, example_input(x), fp32, opset, info)
        with warnings.catch_warnings(), _quiet("root", ""):
            warnings.simplefilter("ignore")
            try:  # the calibrator prints its progress on stdout: the user asked for one file
                with contextlib.redirect_stdout(io.StringIO()):
                    quant_pre_process(fp32, pre, skip_symbolic_shape=True)
                    quantize_static(pre, q, _Calibration(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                                    nodes_to_exclude=[] if plain else _input_convs(pre),
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=CalibrationMethod.Percentile,
                                    # fold each batch's activations into the histograms before the next:
                                    # onnxruntime's histogram calibrators otherwise hold every activation of
                                    # every image (~100 MB per image for a ResNet-50 at 224 px: 512 images ran
                                    # a 24 GB machine out of memory). The option is named for MinMax, but
                                    # quantize_static applies the stride to any calibrator.
                                    # CalibTensorRangeSymmetric off: the percentile calibrator's default is a
                                    # range symmetric about 0, which leaves half of uint8 unused on ReLU outputs
                                    extra_options={"CalibStridedMinMax": 1, "CalibTensorRangeSymmetric": False})
            except Exception as e:
                raise UserError(f"int8 quantization failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        proto = onnx.load(q)
        _set_metadata(proto, info.replace(quantization={"format": "QDQ int8", "weights": "int8 per channel",
                                                        "activations": "uint8, 99.999th percentile, asymmetric range",
                                                        "float_layers": "the convolutions that read the input",
                                                        "calibration_images": len(calibration)}))
        data = proto.SerializeToString()
        got = _run_onnx(fp32, x)
        got8 = _run_onnx(data, x)
    agree = float((got8.argmax(1) == got.argmax(1)).mean())
    acc = (lambda z: float((z.argmax(1) == labels.numpy()).mean())) if labels is not None else None
    check = Int8Check(len(x), agree, acc(got) if acc else None, acc(got8) if acc else None, len(calibration))
    if require_check and not check.passed:
        loss = f", top-1 {check.fp32_top1:.2%} → {check.int8_top1:.2%}" if acc else ""
        raise UserError(f"int8 model agrees with the float model on {agree:.2%} of {len(x)} images (needs "
                        f"{INT8_MIN_AGREEMENT:.0%}){loss} (at most {INT8_MAX_LOSS * 100:.1f} points lost); nothing "
                        f"written: try more --calibration images")
    atomic_write(dest, lambda tmp: Path(tmp).write_bytes(data))
    return dest, check
