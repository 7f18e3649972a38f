"""How a checkpoint holds up on images as users send them: JPEGs, other sizes, grayscale, other exposure.

Each variant of the CIFAR-10 test set (or, with --split val, of the images the checkpoint's run held out for
validation) is encoded as a file would be (PIL, in memory; --write DIR also saves them) and decoded by
resnetlab's own preprocessing with the checkpoint's resize policy, exactly as `resnetlab predict` and `serve`
decode uploads; predictions come from the same Classifier (no TTA).

    python benchmarks/robustness.py runs/cifar10_quick/best.safetensors [--split test|val] [--diagnose]
                                    [--limit N] [--write DIR] [--json FILE]
    python benchmarks/robustness.py --cost KEY=VALUE ...   # the augmentation's batch-pipeline cost instead
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageEnhance

from _common import held_out, median_step_seconds
from resnetlab import load
from resnetlab.decoding import load_uint8


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int, subsampling: int = -1) -> bytes:
    buf = io.BytesIO()
    # PIL's defaults otherwise (4:2:0 chroma subsampling), as most cameras; subsampling=0 keeps 4:4:4
    img.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def _chroma_420(img: Image.Image) -> bytes:
    """JPEG's chroma subsampling without its quantisation: Cb/Cr halved and brought back, luma untouched."""
    y, cb, cr = img.convert("YCbCr").split()
    half = (img.width // 2, img.height // 2)
    cb, cr = (c.resize(half, Image.BILINEAR).resize(img.size, Image.BILINEAR) for c in (cb, cr))
    return _png(Image.merge("YCbCr", (y, cb, cr)).convert("RGB"))


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
# --diagnose: which part of JPEG costs the accuracy (its chroma subsampling, its quantisation of luma)
DIAGNOSTIC = {
    "JPEG q75, 4:4:4 (no chroma subsampling)": lambda im: _jpeg(im, 75, subsampling=0),
    "chroma 4:2:0 only (PNG)": _chroma_420,
}


def variants(diagnose: bool) -> dict:
    return VARIANTS | DIAGNOSTIC if diagnose else VARIANTS


def measure(checkpoint: str, data_dir: str | None, limit: int | None, write: Path | None,
            split: str = "test", diagnose: bool = False) -> dict[str, float]:
    clf = load(checkpoint, device="cpu", batch_size=500)
    test = held_out(clf, data_dir, split)
    n = min(limit or len(test), len(test))
    images = test.take(slice(0, n)).permute(0, 2, 3, 1).numpy()
    labels = test.labels[:n]
    out = {}
    for name, encode in variants(diagnose).items():
        t = time.perf_counter()
        pixels, sizes = [], 0
        for i in range(n):
            data = encode(Image.fromarray(images[i]))
            sizes += len(data)
            if write is not None:
                folder = write / "".join(c for c in name.split(" (")[0].replace(" ", "_").replace("%", "pct")
                                         if c.isalnum() or c in "_-.")
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


def pipeline_cost(recipe_path: str, data_dir: str | None, overrides: list[str]) -> None:
    """Side by side in this process: one epoch of the batch pipeline with and without the artifact
    augmentation (alternated, best of 3), against the measured time of the recipe's training steps."""
    from resnetlab.training.config import load_recipe
    from resnetlab.training.runner import load_splits, make_loaders, setup_runtime
    from resnetlab.models import build_model

    base = load_recipe(recipe_path, [])
    robust = load_recipe(recipe_path, overrides)
    device, amp, cl = setup_runtime(base)
    splits = load_splits(base.data, data_dir, progress=False)
    loaders = {}
    for name, r in (("without", base), ("with", robust)):
        r.data.augment.artifacts_from_epoch = 0
        loaders[name] = make_loaders(r, splits, device, cl)[0]
    best = {k: float("inf") for k in loaders}
    for _ in range(3):
        for name, loader in loaders.items():
            loader.set_epoch(0)
            t = time.perf_counter()
            for _x, _y in loader:
                pass
            best[name] = min(best[name], time.perf_counter() - t)
    model = build_model(base.model.name, 10, base.model.kwargs).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    loader = loaders["without"]
    loader.set_epoch(1)
    epoch_steps = median_step_seconds(model, (b for _, b in zip(range(60), loader)), amp, warm=10) * len(loader)
    extra = best["with"] - best["without"]
    print(f"batch pipeline, one epoch of {len(splits.train)} images: {best['without']:.2f}s without, "
          f"{best['with']:.2f}s with {' '.join(overrides)} (+{extra:.2f}s)")
    print(f"training steps, one epoch (median step x {len(loader)}): {epoch_steps:.1f}s; "
          f"the augmentation adds {100 * extra / (epoch_steps + best['without']):.1f} % to an epoch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--cost", nargs="+", metavar="KEY=VALUE", default=None,
                    help="instead: time the pipeline with these augmentation overrides vs the default recipe")
    ap.add_argument("--recipe", default="cifar10_quick")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default: all 10,000)")
    ap.add_argument("--write", type=Path, default=None, help="also save every variant as files here")
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="val: the images the checkpoint's run held out of training (to choose a recipe on)")
    ap.add_argument("--diagnose", action="store_true",
                    help="also JPEG q75 without chroma subsampling, and chroma subsampling alone")
    ap.add_argument("--json", type=Path, default=None, help="also write {checkpoint: {variant: top-1}} here")
    args = ap.parse_args()
    if args.cost:
        pipeline_cost(args.recipe, args.data_dir, args.cost)
        return
    tables = {}
    for ckpt in args.checkpoints:
        print(f"{ckpt}:", flush=True)
        tables[ckpt] = measure(ckpt, args.data_dir, args.limit, args.write, args.split, args.diagnose)
    if args.json:
        args.json.write_text(json.dumps(tables, indent=1))
    names = list(variants(args.diagnose))
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
