"""`resnetlab info CKPT`: what a checkpoint or exported model says of itself (classes, input, preprocessing,
metrics, provenance), read from its metadata alone."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    s = sub.add_parser("info", help="what a checkpoint or exported model is: classes, input size, preprocessing, "
                                    "metrics and where it came from")
    s.add_argument("checkpoint", help="a .safetensors checkpoint, a run folder (its best checkpoint) or an .onnx "
                                      "file from `resnetlab export`")
    s.add_argument("--json", action="store_true", help="print the whole metadata as JSON")
    s.set_defaults(func=run)


def _figures(metrics: dict) -> list[str]:
    out = []
    for split, row in metrics.items():
        if isinstance(row, dict) and "top1" in row:
            n = f", {row['n']} images" if "n" in row else ""
            out.append(f"{split} top-1 {row['top1']:.4f}" + (f" top-5 {row['top5']:.4f}" if "top5" in row else "") + n)
    return out


def run(args: argparse.Namespace) -> None:
    from ..weights import resolve_checkpoint
    path = resolve_checkpoint(args.checkpoint)
    if path.suffix == ".onnx":
        from ..inference.onnx_runtime import read_onnx_meta
        meta, kind = read_onnx_meta(path), "ONNX graph"
    else:
        from ..models import read_meta
        meta, kind = read_meta(path), "safetensors checkpoint"
    if meta.quantization:
        kind = "int8 ONNX graph"
    if args.json:
        print(json.dumps(dict(meta.to_dict(), file=str(path)), indent=2))
        return
    shown = ", ".join(meta.classes[:10]) + (f", … ({len(meta.classes) - 10} more)" if len(meta.classes) > 10 else "")
    policy = meta.policy
    rows = [("file", f"{path} ({kind}, {path.stat().st_size / 1e6:.1f} MB)"),
            ("task", meta.task),
            ("model", f"{meta.arch}{' ' + json.dumps(meta.kwargs) if meta.kwargs else ''}"),
            ("classes", f"{meta.num_classes}: {shown}"),
            ("input", f"{meta.input_size} px; files decoded to {policy.input_size} px ({policy.mode})"
                      + (f", then resized to {meta.input_size}" if policy.input_size != meta.input_size else "")),
            ("normalise", f"mean {[round(x, 4) for x in meta.mean]}  std {[round(x, 4) for x in meta.std]}")]
    rows += [("metrics", line) for line in _figures(meta.metrics)]
    if meta.epoch is not None:
        rows.append(("trained", f"epoch {meta.epoch}, step {meta.step}"))
    if meta.recipe:
        rows.append(("recipe", str(meta.recipe.get("name", "?"))))
    ref = meta.data_ref
    if ref.dataset:
        where = ref.path or ref.data_dir or ""
        rows.append(("data", f"{ref.dataset}{' ' + where if where else ''}"))
    if meta.finetuned_from:
        rows.append(("fine-tuned from", meta.finetuned_from))
    if meta.quantization:
        rows.append(("quantization", json.dumps(meta.quantization)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
