"""`resnetlab export CKPT --format onnx|export`: a deployable file, checked against PyTorch before it is written."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..inference.formats import DEFAULT_OPSET, FORMATS
from .common import recorded_test_split

if TYPE_CHECKING:
    import torch


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="export a checkpoint to ONNX or a torch.export program (.pt2)")
    s.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder (its best checkpoint)")
    s.add_argument("--format", choices=list(FORMATS), default="onnx",
                   help="onnx (ONNX Runtime and other runtimes) or export (torch.export ExportedProgram)")
    s.add_argument("--out", default=None, help="output file (default: beside the checkpoint, .onnx / .pt2)")
    s.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    s.add_argument("--images", nargs="+", default=None,
                   help="images/folders to check the export on (default: the checkpoint's own test split)")
    s.add_argument("--check-count", type=int, default=1000, help="how many test images to check on")
    s.add_argument("--data-dir", default=None, help="where the checkpoint's data lives, if it moved")
    s.add_argument("--int8", action="store_true", help="onnx: static int8 quantization (ONNX Runtime, QDQ), "
                   "written as .int8.onnx when it agrees with the float model (>= 99 %%, <= 0.5 points lost)")
    s.add_argument("--calibration", type=int, default=512, help="--int8: training images to calibrate on")
    s.set_defaults(func=run)


def check_pixels(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """uint8 pixels of real images, decoded by the checkpoint's own preprocessing."""
    import torch

    from ..inference.classifier import ImageClassifier
    from ..inference.predict import collect_images
    from ..models import read_meta
    from ..weights import resolve_checkpoint
    path = resolve_checkpoint(args.checkpoint)
    meta = read_meta(path)  # the header only: export() loads the weights
    if args.images:
        decoder = ImageClassifier(meta)  # decoding by the checkpoint's policy needs no model
        files = collect_images(args.images)[: args.check_count]
        return torch.stack([decoder.pixels(f) for f in files]), f"{len(files)} given images"
    _, splits = recorded_test_split(meta, path, args.data_dir, "cpu")
    n = min(args.check_count, len(splits.test))
    return splits.test.take(slice(0, n)), f"the first {n} images of its test split"


def run_int8(args: argparse.Namespace) -> None:
    """--int8: calibrated on the recorded training split, checked on the test split (with labels) or --images."""
    import torch

    from ..errors import UserError
    from ..inference.export import export_int8
    from ..models import read_meta
    from ..weights import resolve_checkpoint
    if args.format != "onnx":
        raise UserError("--int8 needs --format onnx")
    if args.calibration < 1:
        raise UserError(f"--calibration must be positive, got {args.calibration}")
    path = resolve_checkpoint(args.checkpoint)
    meta = read_meta(path)
    _, splits = recorded_test_split(meta, path, args.data_dir, "cpu")
    if args.calibration > len(splits.train):
        print(f"--calibration {args.calibration}: the training split has {len(splits.train)} images; calibrating "
              f"on all of them")
    pick = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:args.calibration]
    calibration = splits.train.take(pick)
    if args.images:
        pixels, what = check_pixels(args)
        labels = None
    else:
        n = min(args.check_count, len(splits.test))
        pixels, labels, what = splits.test.take(slice(0, n)), splits.test.labels[:n], f"the first {n} test images"
    dest, check = export_int8(path, calibration, pixels, labels, args.out, args.opset)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB), calibrated on {len(calibration)} training images")
    acc = (f"; top-1 float {check.fp32_top1:.2%}, int8 {check.int8_top1:.2%}" if check.fp32_top1 is not None
           else "; accuracy not measured (the given images have no labels)")
    print(f"checked with onnxruntime on {what}: int8 top-1 agrees with float on {check.agreement:.2%}{acc}")


def run(args: argparse.Namespace) -> None:
    from ..errors import UserError
    from ..inference.export import export
    if args.check_count < 1:
        raise UserError(f"--check-count must be positive, got {args.check_count}")
    if args.int8:
        run_int8(args)
        return
    pixels, what = check_pixels(args)
    dest, check = export(args.checkpoint, args.format, pixels, args.out, args.opset)
    runtime = "onnxruntime" if args.format == "onnx" else "torch.export.load"
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    print(f"checked with {runtime} on {what}: max abs logit difference {check.max_abs_diff:.2e} "
          f"(limit 1e-04), top-1 agreement {check.top1_agreement:.2%}")
