"""How a checkpoint holds up on images as users send them: JPEGs, other sizes, grayscale, other exposure.

Each variant of the CIFAR-10 test set is encoded as a file would be (PIL, in memory; --write DIR also
saves them) and decoded by resnetlab's own preprocessing with the checkpoint's resize policy, exactly as
`resnetlab predict` and `serve` decode uploads; predictions come from the same Classifier (no TTA).

    python benchmarks/robustness.py runs/cifar10_quick/best.safetensors [--limit N] [--write DIR]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from resnetlab import load
from resnetlab.data.cifar import load_cifar
from resnetlab.preprocessing import load_uint8


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)  # PIL's defaults otherwise (4:2:0 chroma subsampling), as most cameras
    return buf.getvalue()


JPEG_MAGIC = b"\xff\xd8"
VARIANTS = {
    "clean (PNG)": lambda im: _png(im),
    "JPEG q95": lambda im: _jpeg(im, 95),
    "JPEG q75": lambda im: _jpeg(im, 75),
    "JPEG q50": lambda im: _jpeg(im, 50),
    "upscaled x4 + JPEG q75": lambda im: _jpeg(im.resize((im.width * 4, im.height * 4), Image.BICUBIC), 75),
    "grayscale": lambda im: _png(im.convert("L")),
    "brightness +15 %, contrast -15 %": lambda im: _png(ImageEnhance.Contrast(
        ImageEnhance.Brightness(im).enhance(1.15)).enhance(0.85)),
}


def measure(checkpoint: str, data_dir: str | None, limit: int | None, write: Path | None) -> dict[str, float]:
    clf = load(checkpoint, device="cpu", batch_size=500)
    test = load_cifar(data_dir or (clf.metadata.get("dataset") or {}).get("data_dir"), "cifar10", "test")
    n = min(limit or len(test), len(test))
    images = test.images[:n].permute(0, 2, 3, 1).numpy()
    labels = test.labels[:n]
    out = {}
    for name, encode in VARIANTS.items():
        t = time.perf_counter()
        pixels, sizes = [], 0
        for i in range(n):
            data = encode(Image.fromarray(images[i]))
            sizes += len(data)
            if write is not None:
                folder = write / name.split(" (")[0].replace(" ", "_").replace("%", "pct").replace(",", "")
                folder.mkdir(parents=True, exist_ok=True)
                suffix = "jpg" if data.startswith(JPEG_MAGIC) else "png"
                (folder / f"{i:05d}.{suffix}").write_bytes(data)
            pixels.append(torch.from_numpy(load_uint8(io.BytesIO(data), clf.policy).copy()))
        x = torch.stack(pixels)
        pred = torch.cat([clf.logits(x[i:i + 500]).argmax(1) for i in range(0, n, 500)])
        out[name] = float((pred == labels).float().mean())
        print(f"  {name:<34} top-1 {out[name]:.4f}   ({sizes / n / 1024:.1f} KiB/image, "
              f"{time.perf_counter() - t:.1f}s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default: all 10,000)")
    ap.add_argument("--write", type=Path, default=None, help="also save every variant as files here")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    tables = {}
    for ckpt in args.checkpoints:
        print(f"{ckpt}:", flush=True)
        tables[ckpt] = measure(ckpt, args.data_dir, args.limit, args.write)
    names = list(VARIANTS)
    print("\n| variant | " + " | ".join(Path(c).parent.name or c for c in tables) + " |")
    print("|---|" + "---|" * len(tables))
    for v in names:
        cells = []
        for t in tables.values():
            d = t[v] - t[names[0]]
            cells.append(f"{100 * t[v]:.2f} %" + ("" if v == names[0] else f" ({100 * d:+.2f})"))
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
