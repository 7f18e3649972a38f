"""`resnetlab predict CKPT images/folders…`: top-k classes per image, from the checkpoint alone
(architecture, class names, normalisation and input size all come from its metadata)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data.augment import normalize
from ..data.folders import EXTENSIONS, decode_image
from ..errors import UserError


def collect_images(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such image file or folder")
    if not files:
        raise UserError(f"no images found in {', '.join(paths)} (looked for {', '.join(EXTENSIONS)})")
    return files


@torch.no_grad()
def predict(checkpoint: str, paths: list[str], top_k: int = 3, batch_size: int = 256) -> list[dict]:
    from ..training.runner import model_from_checkpoint
    model, meta = model_from_checkpoint(checkpoint)
    size, classes = meta["input_size"], meta["classes"]
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    files = collect_images(paths)
    out = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        imgs = []
        for f in chunk:
            try:
                imgs.append(torch.from_numpy(decode_image(f, size).copy()))
            except Exception as e:  # noqa: BLE001 - any decoding failure is the user's file
                raise UserError(f"{f}: cannot decode image ({e})") from None
        probs = model(normalize(torch.stack(imgs), mean, std)).softmax(1)
        top = probs.topk(min(top_k, len(classes)), dim=1)
        for f, p, idx in zip(chunk, top.values.tolist(), top.indices.tolist()):
            out.append({"file": str(f), "top": [{"class": classes[j], "prob": round(q, 4)} for q, j in zip(p, idx)]})
    return out


def cmd_predict(args: argparse.Namespace) -> None:
    results = predict(args.checkpoint, args.images, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(r["file"] + "  " + "  ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))


def add_predict_parser(sub) -> None:
    s = sub.add_parser("predict", help="classify images with a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", help="image files and/or folders")
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)
