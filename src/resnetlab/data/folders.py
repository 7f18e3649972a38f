"""Users' own images (a class-per-folder tree, a CSV/JSONL manifest, or WebDataset shards: data.sources),
decoded once into the memory-mapped cache (data.cache) and split into train / test views of it.

A folder with train/ + test/ (or val/) sub-folders gives its own test split; any other source is split
with a seeded stratified split. Grayscale, RGBA, 16-bit and palette images are converted to RGB; files that
cannot be decoded are skipped with a count (or fail under strict=True).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..decoding import ResizePolicy
from .cache import DecodedCache, cache_dir, open_cache
from .cifar import ImageSet
from .sources import scan, source_kind


def cached_set(path: str | Path, size: int, strict: bool = False, progress: bool = True, workers: int = 0,
               log=print, mode: str = "squash") -> tuple[ImageSet, DecodedCache]:
    """One source as an ImageSet over its decoded cache (built first when missing or stale)."""
    listing = scan(path, cache_dir(), progress=progress)
    cache = open_cache(listing, ResizePolicy(size, mode), workers=workers, strict=strict, progress=progress,
                       log=log)
    m = cache.meta
    if m.bad_count:
        if strict:
            raise UserError(f"{m.bad[0]}: cannot decode image (one of {m.bad_count} unreadable files of "
                            f"{listing.identity}); remove them or drop --strict")
        log(f"{listing.identity}: {m.bad_count} unreadable image(s) skipped, e.g. {m.bad[0]} "
            f"(all listed in {cache.path / 'meta.json'})")
    return ImageSet(cache.images, cache.labels, list(m.classes), listing.identity, cache=cache.path), cache


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
    return ds.subset(idx)


def load_image_folder(root: str | Path, size: int = 32, split: float = 0.2, seed: int = 0,
                      strict: bool = False, progress: bool = True, workers: int = 0,
                      log=print) -> tuple[ImageSet, ImageSet]:
    """(train, test) ImageSets of a source (folder, manifest or shards: see data.sources); a folder's
    train/ + test|val/ sub-roots are used when present, else a seeded stratified split of `split`."""
    root_s = str(root)
    kw = dict(strict=strict, progress=progress, workers=workers, log=log)
    if source_kind(root_s) == "folder":
        root = Path(root_s)
        if not root.exists():
            raise UserError(f"{root}: image folder does not exist")
        test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        if (root / "train").is_dir() and test_dir is not None:
            train, _ = cached_set(root / "train", size, **kw)
            test, _ = cached_set(test_dir, size, **kw)
            unknown = sorted(set(test.classes) - set(train.classes))
            if unknown:
                raise UserError(f"{test_dir}: classes not in train/: {', '.join(unknown[:5])}")
            index = torch.tensor([train.classes.index(c) for c in test.classes])
            test.labels, test.classes = index[test.labels], list(train.classes)
            return train, test
    full, _ = cached_set(root_s, size, **kw)
    keep, held = stratified_split(full.labels, split, seed)
    if len(held) == 0:
        raise UserError(f"{root_s}: too few images per class to hold out a test split ({len(full)} images, "
                        f"{len(full.classes)} classes); add images, or provide train/ and test/ sub-folders")
    return full.subset(keep), full.subset(held)
