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
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import UserError
from .cifar import ImageSet

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Above this many decoded bytes we stream from disk with a DataLoader instead of holding everything.
IN_MEMORY_LIMIT = 8 * 1024**3


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise UserError(f"{root}: image folder does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
               if p.suffix.lower() in EXTENSIONS]
    if not samples:
        raise UserError(f"{root}: no images found (expected {root}/<class>/*.png|jpg|jpeg|bmp|webp)")
    present = {label for _, label in samples}
    if len(present) < 2:
        raise UserError(f"{root}: only {len(present)} class with images; a classifier needs at least 2 "
                        f"class folders")
    return classes, samples


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.uint32)
        peak = 65535 if arr.max() > 255 else 255
        img = Image.fromarray((arr * 255 // peak).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return background
    return img.convert("RGB")


def decode_image(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        rgb = _to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode_samples(samples: list[tuple[Path, int]], size: int, strict: bool,
                   progress: bool = True, desc: str = "decoding") -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    labels = np.empty(len(samples), dtype=np.int64)
    kept, bad = 0, []
    for path, label in tqdm(samples, desc=desc, disable=not progress, unit="img", leave=False):
        try:
            images[kept] = decode_image(path, size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
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
    return subset(full, keep), subset(full, held)


def _check_memory(n: int, size: int, root: Path) -> None:
    need = n * 3 * size * size
    if need > IN_MEMORY_LIMIT:
        raise UserError(f"{root}: {n} images at {size}px need {need / 1e9:.1f} GB decoded; use a smaller "
                        f"--image-size or stream with resnetlab.data.folders.StreamingFolder")


class StreamingFolder(torch.utils.data.Dataset):
    """For folders too large to hold decoded: decode per item, to be used with a DataLoader + workers."""

    def __init__(self, root: str | Path, size: int = 224) -> None:
        self.classes, self.samples = scan_folder(Path(root))
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return torch.from_numpy(decode_image(path, self.size).copy()), label
