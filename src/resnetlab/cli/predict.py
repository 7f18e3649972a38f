"""`resnetlab predict CKPT images/folders…`: top-k classes per image."""
from __future__ import annotations

import argparse
import json

from ..inference.predict import predict


def add_parser(sub) -> None:
    s = sub.add_parser("predict", help="classify images with a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", help="image files and/or folders")
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    results = predict(args.checkpoint, args.images, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(r["file"] + "  " + "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
