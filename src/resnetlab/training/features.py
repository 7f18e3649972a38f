"""Head-only training on a frozen backbone's pooled features, computed once per run.

A linear probe (and the head-only first stage of two-stage fine-tuning) trains nothing but the classifier,
so every epoch of the full path runs the same frozen backbone again. Here the backbone runs once per image
(and per extra augmented view), the pooled features are kept in memory (N x C floats: 40 MB for 5,000
images of a ResNet-50), and the same Trainer trains the head on them. The model the Trainer holds is
`PooledHead`, whose state_dict is the whole network's, so every checkpoint of the stage is a complete,
usable checkpoint; the stage's test figure is measured on images with the whole network.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..data import BatchLoader
from ..data.augment import AugmentConfig
from ..evaluation.profile import count_macs


class PooledHead(nn.Module):
    """The head of `net` applied to pooled features given as (N, C, 1, 1) maps (global pooling of a 1x1 map is
    the identity, so this is exactly net.forward_head on the backbone's output). Its state_dict is net's."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(x)

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


@dataclass
class FeatureSet:
    """Pooled features: train (V, N, C) for V views, val (N, C); labels as the splits'."""
    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    seconds: float
    images: int          # backbone forwards made (N x V + validation)
    flops: int           # their cost: 2 x MACs each


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def pooled(net: nn.Module, loader: BatchLoader, amp_dtype: torch.dtype | None, bar=None) -> torch.Tensor:
    """The pooled features of every image of loader's epoch, at each image's position in the split (bar: a
    progress bar advanced by the images done)."""
    order = loader.epoch_order()
    out = None
    at = 0
    for x, _ in loader:
        with _autocast(x.device, amp_dtype):
            f = net.forward_head(net.forward_features(x), pre_logits=True).float()
        if out is None:
            out = torch.empty(len(order), f.shape[1], dtype=torch.float32, device=f.device)
        out[order[at:at + len(f)].to(f.device)] = f
        at += len(f)
        if bar is not None:
            bar.update(len(f))
    assert out is not None and at == len(order)
    return out


def compute_features(net: nn.Module, train, val, *, views: int, augment: AugmentConfig, batch_size: int,
                     seed: int, mean, std, device: torch.device, image_size: int | None,
                     amp_dtype: torch.dtype | None, channels_last: bool, log=print,
                     progress: bool = False) -> FeatureSet:
    """View 0: the training images as stored (as the validation images are read); views 1..V-1: the training
    augmentation, each view its own seeded draw."""
    from tqdm import tqdm
    t0 = time.perf_counter()
    was_training = net.training
    net.eval()
    common = dict(mean=mean, std=std, device=device, image_size=image_size, channels_last=channels_last)
    n = len(train) * views + len(val)
    bar = tqdm(total=n, disable=not progress, leave=False, unit="img", desc="features")
    try:
        vs = [pooled(net, BatchLoader(train, batch_size, **common), amp_dtype, bar)]
        for v in range(1, views):
            aug_l = BatchLoader(train, batch_size, train=True, augment=augment, seed=seed * 7_919 + v,
                                drop_last=False, **common)
            aug_l.set_epoch(v)
            vs.append(pooled(net, aug_l, amp_dtype, bar))
        fv = pooled(net, BatchLoader(val, batch_size, **common), amp_dtype, bar)
    finally:
        bar.close()
        net.train(was_training)
    size = image_size or train.image_size
    flops = 2 * count_macs(_cpu(net), size) * n
    secs = time.perf_counter() - t0
    log(f"features: the frozen backbone ran once on {len(train)} training images x {views} view(s) and "
        f"{len(val)} validation images in {secs:.1f}s ({n / max(secs, 1e-9):.1f} img/s, {flops / 1e15:.3f} "
        f"PFLOP); the head trains on them")
    return FeatureSet(torch.stack(vs), train.labels.to(fv.device), fv, val.labels.to(fv.device), secs, n, flops)


def _cpu(net: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(net).float().cpu().to(memory_format=torch.contiguous_format)


class FeatureLoader:
    """A BatchSource of pooled features: epoch e of training reads view e mod V, in a seeded order of
    (seed, epoch); evaluation reads view 0 in order. DDP: as BatchLoader (global batch drawn alike on every
    rank, each keeping its slice; evaluation in contiguous blocks)."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool = False,
                 seed: int = 0, shard: tuple[int, int] = (0, 1)) -> None:
        self.views = views if views.dim() == 3 else views.unsqueeze(0)
        self.labels, self.batch_size, self.train, self.seed = labels, batch_size, train, seed
        self.rank, self.world = shard
        self.epoch, self._start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0, aug_state: torch.Tensor | None = None) -> None:
        self.epoch, self._start = epoch, start_batch

    def aug_state(self) -> torch.Tensor | None:
        return None

    def epoch_size(self, epoch: int | None = None) -> int | None:
        return None

    def _block(self) -> tuple[int, int]:
        n = len(self.labels)
        if self.train or self.world == 1:
            return 0, n
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def __len__(self) -> int:
        lo, hi = self._block()
        return (hi - lo) // self.batch_size if self.train else math.ceil((hi - lo) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.labels), generator=g)
            feats = self.views[self.epoch % len(self.views)]
        else:
            order = torch.arange(*self._block())
            feats = self.views[0]
        start, self._start = self._start, 0
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size].to(feats.device)
            if self.train and self.world > 1:
                per = len(idx) // self.world
                idx = idx[self.rank * per:(self.rank + 1) * per]
            yield feats[idx][:, :, None, None], self.labels[idx]


def head_train_flops(net: nn.Module) -> int:
    """Training FLOPs per sample of the head on pooled features (forward + backward of one linear layer)."""
    fc = net.get_classifier()
    return 3 * 2 * sum(p.numel() for p in fc.parameters() if p.dim() > 1)
