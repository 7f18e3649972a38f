"""Batches from uint8 storage: an in-memory tensor on the device (airbench style) or, on the CPU, the memory
map of a decoded cache; sampled with a seeded generator, augmented and normalised per batch.

Every epoch's order and augmentation come from a generator seeded by (seed, epoch), so an epoch can
be replayed exactly after a resume. Orders: "random" (a full shuffle) or "quasi-random" (FFCV's order for
data bigger than memory: contiguous chunks of the storage in a shuffled order, shuffled within a window of
chunks, so the disk is read in long sequential runs).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Iterator, Protocol, runtime_checkable

import torch

from ..files import atomic_write_text
from ..preprocessing import normalize, resize_batch
from .augment import AugmentConfig, crop_flip, cutout, photo_artifacts
from .cifar import ImageSet


ORDERS = ("random", "quasi-random", "balanced")
CHUNK_BYTES = 32 << 20   # quasi-random order: contiguous runs of about this many bytes of images
WINDOW_CHUNKS = 8        # ... shuffled together in windows of this many chunks


def channel_stats(data: ImageSet | torch.Tensor, chunk_bytes: int = 4 << 20
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, read in chunks of about chunk_bytes of pixels (integer sums:
    no float copy of the set, nor of a large chunk of it)."""
    ds = data if isinstance(data, ImageSet) else ImageSet(data, torch.empty(len(data)), [])
    c, h, w = ds.images.shape[1:]
    chunk = max(1, chunk_bytes // (c * h * w))
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(ds), chunk):
        x = ds.take(slice(i, i + chunk)).to(torch.int32)
        total += x.sum(dim=(0, 2, 3), dtype=torch.int64).double()
        total_sq += (x * x).sum(dim=(0, 2, 3), dtype=torch.int64).double()
    total /= 255.0
    total_sq /= 255.0**2
    n = len(ds) * h * w
    mean = total / n
    std = (total_sq / n - mean**2).clamp_min(0).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


STATS_FILE = "stats.json"  # in a decoded cache's folder: channel statistics of the splits trained on it
STATS_KEPT = 64


def split_stats(ds: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """channel_stats of a split, kept in its decoded cache (stats.json, keyed by the split's rows): a second run
    on the same cache and split reads them instead of every training image. A value there that is not three
    finite numbers in [0, 1] is computed again; a cache nobody may write to is only read."""
    if ds.cache is None:
        return channel_stats(ds)
    rows = ds.rows if ds.rows is not None else torch.arange(len(ds))
    key = hashlib.sha256(rows.to(torch.int64).numpy().tobytes()).hexdigest()[:24]
    path = ds.cache / STATS_FILE
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError, RecursionError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and all(_unit_triple(entry.get(k)) for k in ("mean", "std")):
        return tuple(entry["mean"]), tuple(entry["std"])
    mean, std = channel_stats(ds)
    known = {k: v for k, v in list(known.items())[-(STATS_KEPT - 1):] if k != key}
    known[key] = {"mean": list(mean), "std": list(std)}
    try:
        atomic_write_text(path, json.dumps(known))
    except OSError:
        pass
    return mean, std


def _unit_triple(v) -> bool:
    return (isinstance(v, list) and len(v) == 3 and
            all(isinstance(x, float | int) and not isinstance(x, bool) and 0 <= x <= 1 for x in v))


@runtime_checkable
class BatchSource(Protocol):
    """What the training engine needs of a source of training batches (BatchLoader implements it).

    Iterating yields one epoch of (inputs, labels) batches on the device, in an order that is a function of
    (seed, epoch) alone, so that a resumed epoch replays exactly; len() is the number of batches an epoch
    yields on this process."""

    labels: torch.Tensor  # the split's labels (class counts: balanced class weights)

    def set_epoch(self, epoch: int, start_batch: int = 0, aug_state: torch.Tensor | None = None) -> None:
        """Select the epoch the next iteration yields; start_batch/aug_state continue it mid-way (resume)."""

    def aug_state(self) -> torch.Tensor | None:
        """The augmentation generator's state after the batches yielded so far (saved mid-epoch)."""

    def epoch_size(self, epoch: int | None = None) -> int | None:
        """Side of the images that epoch yields (progressive resizing); None: as stored."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class BatchLoader:
    """Iterates (inputs, labels) batches from an ImageSet held on `device` (a BatchSource)."""

    def __init__(self, data: ImageSet, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 train: bool = False, augment: AugmentConfig | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, drop_last: bool | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, image_size: int | None = None,
                 shard: tuple[int, int] = (0, 1), order: str = "random") -> None:
        self.device = torch.device(device)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.order = order
        if self.device.type == "cpu":  # read in place: a memory-mapped cache stays on disk / in the page cache
            self.images, self.rows = data.images, data.rows
        else:  # the split's pixels on the device, once
            self.images, self.rows = data.materialize().images.to(self.device), None
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train else None
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.seed = seed
        self.epoch = 0
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.dtype = dtype
        self.image_size = image_size  # resize on the fly (e.g. 32 → 64 for pretrained nets)
        self._start: tuple[int, torch.Tensor | None] = (0, None)  # (batch, augmentation state) to resume at
        self._gen: torch.Generator | None = None  # the running epoch's augmentation generator
        self._flip_base: torch.Tensor | None = None  # alternating flips: who is mirrored in even epochs
        # Distributed (rank, world size). Training: every rank draws the same global batch (order and
        # augmentation from the same seeded generators) and keeps its slice, so N ranks see exactly what
        # one process sees. Evaluation: each rank takes a contiguous block of the split.
        self.rank, self.world = shard
        if self.world > 1 and train and batch_size % self.world:
            raise ValueError(f"batch size {batch_size} is not divisible by {self.world} ranks")

    def set_epoch(self, epoch: int, start_batch: int = 0, aug_state: torch.Tensor | None = None) -> None:
        """Select the epoch to iterate; start_batch/aug_state continue it mid-way exactly (resume)."""
        self.epoch = epoch
        self._start = (start_batch, aug_state)

    def aug_state(self) -> torch.Tensor | None:
        """State of the augmentation generator after the batches yielded so far in this epoch."""
        return self._gen.get_state() if self._gen is not None else None

    def _block(self) -> tuple[int, int]:
        n = len(self.labels)
        if self.train or self.world == 1:
            return 0, n
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def epoch_order(self, epoch: int | None = None) -> torch.Tensor:
        """The positions of the split in the order the (or this) epoch yields them."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(*self._block())
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (self.epoch if epoch is None else epoch))
        if self.order == "quasi-random":
            return quasi_random_order(n, max(1, CHUNK_BYTES // self.images[0].numel()), WINDOW_CHUNKS, g)
        if self.order == "balanced":  # n draws with replacement: a class uniformly, then an image of it uniformly
            labels = self.labels.cpu()
            counts = torch.bincount(labels)
            present = torch.nonzero(counts).flatten()
            by_class = torch.argsort(labels, stable=True)  # the split's positions, grouped by class
            starts = torch.cumsum(counts, 0) - counts
            cls = present[torch.randint(len(present), (n,), generator=g)]
            within = (torch.rand(n, generator=g, dtype=torch.float64) * counts[cls]).long()
            return by_class[starts[cls] + within]
        return torch.randperm(n, generator=g)

    def _pixels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[self.rows[idx.cpu()].to(self.images.device)] if self.rows is not None \
            else self.images[idx]

    def epoch_size(self, epoch: int | None = None) -> int | None:
        """Side of the images this (or the given) epoch yields; None: as stored."""
        e = self.epoch if epoch is None else epoch
        a = self.augment
        if a is not None and e < len(a.epoch_sizes):
            return a.epoch_sizes[e]
        return self.image_size

    def _alternate_flips(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Alternating flips (airbench, Jordan 2024): a random half of the images is mirrored in even epochs
        and the other half in odd ones, so every pair of epochs shows each image both ways. A function of
        (seed, epoch, image), hence exact on resume and the same on every rank."""
        if self.augment is None or self.augment.flip_mode != "alternate":
            return None
        if self._flip_base is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 104_729)
            self._flip_base = (torch.rand(len(self.labels), generator=g) < 0.5).to(self.device)
        return self._flip_base[idx] ^ bool(self.epoch % 2)

    def __len__(self) -> int:
        lo, hi = self._block()
        n = hi - lo
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919)
        start, state = self._start
        self._start = (0, None)
        if state is not None:
            g.set_state(state)
        self._gen = g
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size].to(self.device)
            if self.train and self.world > 1:
                # this rank reads only its slice of the global batch; the other rows stay zero (augmentation
                # draws per image of the global batch, so every rank's draws equal one process's)
                per = len(idx) // self.world
                mine = slice(self.rank * per, (self.rank + 1) * per)
                x = torch.zeros((len(idx),) + tuple(self.images.shape[1:]), dtype=self.images.dtype,
                                device=self.device)
                x[mine] = self._pixels(idx[mine])
            else:
                x = self._pixels(idx)
            if self.augment is not None and (self.augment.crop_padding or self.augment.flip):
                x = crop_flip(x, self.augment, g, self._alternate_flips(idx))
            if self.augment is not None and self.augment.artifacts \
                    and self.epoch >= self.augment.artifacts_from_epoch:
                x = photo_artifacts(x, self.augment, g)
            x = normalize(x, self.mean, self.std, self.dtype)
            if self.augment is not None and self.augment.cutout:
                x = cutout(x, self.augment.cutout, g)
            size = self.epoch_size()
            if size and size != self.image_size:  # progressive resizing: an early, low-resolution epoch
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False)
            elif self.image_size:
                x = resize_batch(x, self.image_size)
            y = self.labels[idx]
            if self.train and self.world > 1:
                per = len(y) // self.world
                x, y = x[self.rank * per:(self.rank + 1) * per], y[self.rank * per:(self.rank + 1) * per]
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last
                             else torch.contiguous_format)
            yield x, y


def quasi_random_order(n: int, chunk: int, window: int, g: torch.Generator) -> torch.Tensor:
    """A seeded permutation of range(n) that reads storage in runs: chunks of `chunk` consecutive positions
    in a shuffled order, the positions of each window of `window` chunks shuffled together."""
    starts = torch.randperm(math.ceil(n / chunk), generator=g) * chunk
    out = []
    for w in range(0, len(starts), window):
        pos = torch.cat([torch.arange(int(s), min(n, int(s) + chunk)) for s in starts[w:w + window]])
        out.append(pos[torch.randperm(len(pos), generator=g)])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
