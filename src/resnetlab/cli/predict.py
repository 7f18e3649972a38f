"""`resnetlab predict CKPT images/folders…`: top-k classes per image."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError


def add_parser(sub) -> None:
    s = sub.add_parser("predict", help="classify images with a checkpoint")
    s.add_argument("checkpoint", help="a .safetensors checkpoint, a run folder (its best checkpoint) or an .onnx "
                                      "file from `resnetlab export` (float or int8)")
    s.add_argument("images", nargs="+", help="image files and/or folders")
    s.add_argument("--top-k", type=int, default=3, help="how many classes to print per image")
    s.add_argument("--json", action="store_true", help="print one JSON object per image")
    s.add_argument("--device", default="cpu", help="where a .safetensors checkpoint runs: cpu, auto (cuda > mps > "
                                                   "cpu), cuda, cuda:N, mps (.onnx files: ONNX Runtime on the CPU)")
    s.add_argument("--explain", metavar="DIR", help="also write each image's Grad-CAM overlay to DIR/<name>.cam.png")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..inference.predict import predict
    results = predict(args.checkpoint, args.images, args.top_k, device=args.device, explain_dir=args.explain)
    bad = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "top" in r:
                print(r["file"] + "  " + "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
                      + (f"  → {r['explanation']['file']}" if "explanation" in r else ""))
    for r in bad:
        print(f"{r['file']}: {r['error']}", file=sys.stderr)
    if bad:  # the good files are classified above; the run still says it was not clean
        raise UserError(f"{len(bad)} of {len(results)} file(s) could not be classified (listed above)")
