"""`resnetlab export CKPT --format onnx|export`: a deployable file, checked against PyTorch before it is written."""
from __future__ import annotations

import argparse

import torch

from ..inference.export import DEFAULT_OPSET, FORMATS, export
from ..inference.classifier import ImageClassifier
from ..inference.predict import collect_images
from ..models import validate_meta
from ..weights import read_metadata, resolve_checkpoint
from .common import recorded_test_split


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
    s.set_defaults(func=run)


def check_pixels(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """uint8 pixels of real images, decoded by the checkpoint's own preprocessing."""
    path = resolve_checkpoint(args.checkpoint)
    meta = validate_meta(read_metadata(path), path)  # the header only: export() loads the weights
    if args.images:
        decoder = ImageClassifier(meta)  # decoding by the checkpoint's policy needs no model
        files = collect_images(args.images)[: args.check_count]
        return torch.stack([decoder.pixels(f) for f in files]), f"{len(files)} given images"
    _, splits = recorded_test_split(meta, path, args.data_dir, "cpu")
    n = min(args.check_count, len(splits.test))
    return splits.test.take(slice(0, n)), f"the first {n} images of its test split"


def run(args: argparse.Namespace) -> None:
    from ..errors import UserError
    if args.check_count < 1:
        raise UserError(f"--check-count must be positive, got {args.check_count}")
    pixels, what = check_pixels(args)
    dest, check = export(args.checkpoint, args.format, pixels, args.out, args.opset)
    runtime = "onnxruntime" if args.format == "onnx" else "torch.export.load"
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    print(f"checked with {runtime} on {what}: max abs logit difference {check.max_abs_diff:.2e} "
          f"(limit 1e-04), top-1 agreement {check.top1_agreement:.2%}")
