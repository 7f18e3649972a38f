"""Class-per-folder image sets (torchvision ImageFolder layout), decoded once into a uint8 tensor.

root/<class>/*.png|jpg|jpeg|bmp|webp, class names sorted. Optional root/train + root/test (or val)
sub-roots; otherwise a seeded stratified split. Grayscale, RGBA, 16-bit and palette images are
converted to RGB; corrupt files are skipped with a count (or fail under strict=True).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..preprocessing import EXTENSIONS, ImageDecodeError, ResizePolicy, load_uint8
from .cifar import ImageSet

# The whole set is decoded into memory once (the batch pipeline's design); above this many decoded
# bytes we refuse rather than swap. Streaming from disk is not implemented.
IN_MEMORY_LIMIT = 8 * 1024**3


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise UserError(f"{root}: image folder does not exist")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {c: [p for p in sorted((root / c).iterdir()) if p.is_file() and p.suffix.lower() in EXTENSIONS]
             for c in folders}
    empty = [c for c in folders if not files[c]]
    if empty and len(empty) < len(folders):
        warnings.warn(f"{root}: ignored {len(empty)} class folder(s) without images: {', '.join(empty[:5])}"
                      f"{' …' if len(empty) > 5 else ''}", stacklevel=2)
    classes = [c for c in folders if files[c]]
    samples = [(p, i) for i, c in enumerate(classes) for p in files[c]]
    if not samples:
        raise UserError(f"{root}: no images found (expected {root}/<class>/*.png|jpg|jpeg|bmp|webp)")
    if len(classes) < 2:
        raise UserError(f"{root}: only {len(classes)} class folder with images; a classifier needs at least 2")
    return classes, samples


def decode_image(path: Path, size: int, mode: str = "squash") -> np.ndarray:
    """(3, size, size) uint8 pixels of one file, through the shared preprocessing."""
    return load_uint8(path, ResizePolicy(size, mode))


def decode_samples(samples: list[tuple[Path, int]], size: int, strict: bool,
                   progress: bool = True, desc: str = "decoding") -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    labels = np.empty(len(samples), dtype=np.int64)
    kept, bad = 0, []
    for path, label in tqdm(samples, desc=desc, disable=not progress, unit="img", leave=False):
        try:
            images[kept] = decode_image(path, size)
        except ImageDecodeError as e:
            if strict:
                raise UserError(f"{path}: cannot decode image ({e}); remove it or drop --strict") from None
            bad.append(path)
            continue
        labels[kept] = label
        kept += 1
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s), e.g. {bad[0]}", stacklevel=2)
    if kept == 0:
        raise UserError(f"no readable images among {len(samples)} files")
    return torch.from_numpy(images[:kept].copy()), torch.from_numpy(labels[:kept].copy())


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): `fraction` of each class held out, chosen with a seeded generator."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"split fraction must be between 0 and 1, got {fraction}")
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def subset(ds: ImageSet, idx: torch.Tensor) -> ImageSet:
    return ImageSet(ds.images[idx], ds.labels[idx], ds.classes, ds.source)


def load_image_folder(root: str | Path, size: int = 32, split: float = 0.2, seed: int = 0,
                      strict: bool = False, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) ImageSets from a folder; uses train/ + test|val/ sub-roots when present."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: image folder does not exist")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train_s = scan_folder(root / "train")
        test_classes, test_s = scan_folder(test_dir)
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UserError(f"{test_dir}: classes not in train/: {', '.join(unknown[:5])}")
        test_s = [(p, index[test_classes[l]]) for p, l in test_s]
        _check_memory(len(train_s) + len(test_s), size, root)
        x, y = decode_samples(train_s, size, strict, progress, "decoding train")
        xt, yt = decode_samples(test_s, size, strict, progress, "decoding test")
        return ImageSet(x, y, classes, str(root / "train")), ImageSet(xt, yt, classes, str(test_dir))
    classes, samples = scan_folder(root)
    _check_memory(len(samples), size, root)
    x, y = decode_samples(samples, size, strict, progress)
    full = ImageSet(x, y, classes, str(root))
    keep, held = stratified_split(y, split, seed)
    if len(held) == 0:
        raise UserError(f"{root}: too few images per class to hold out a test split ({len(y)} images, "
                        f"{len(classes)} classes); add images, or provide train/ and test/ sub-folders")
    return subset(full, keep), subset(full, held)


def _check_memory(n: int, size: int, root: Path) -> None:
    need = n * 3 * size * size
    if need > IN_MEMORY_LIMIT:
        raise UserError(f"{root}: {n} images at {size}px need {need / 1e9:.1f} GB decoded; use a smaller "
                        f"--image-size, or a subset of the folder")
