"""Top-k classes for image files, from a checkpoint alone: architecture, class names, normalisation
and input size all come from its metadata. The Python API behind `resnetlab predict`."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models import load_model
from ..preprocessing import EXTENSIONS, ImageDecodeError, ResizePolicy, load_uint8, normalize


def collect_images(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such image file or folder")
    if not files:
        raise UserError(f"no images found in {', '.join(paths)} (looked for {', '.join(EXTENSIONS)})")
    return files


@torch.no_grad()
def predict(checkpoint: str, paths: list[str], top_k: int = 3, batch_size: int = 256) -> list[dict]:
    if not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top-k must be a positive integer, got {top_k!r}")
    model, meta = load_model(checkpoint)
    classes = meta["classes"]
    policy = ResizePolicy(meta["input_size"], (meta.get("resize") or {}).get("mode", "squash"))
    files = collect_images(paths)
    out = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        imgs = []
        for f in chunk:
            try:
                imgs.append(torch.from_numpy(load_uint8(f, policy).copy()))
            except ImageDecodeError as e:
                raise UserError(f"{f}: cannot decode image ({e})") from None
        probs = model(normalize(torch.stack(imgs), meta["mean"], meta["std"])).softmax(1)
        top = probs.topk(min(top_k, len(classes)), dim=1)
        for f, p, idx in zip(chunk, top.values.tolist(), top.indices.tolist()):
            out.append({"file": str(f), "top": [{"class": classes[j], "prob": round(q, 4)} for q, j in zip(p, idx)]})
    return out
