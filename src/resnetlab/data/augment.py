"""Batched augmentation on the device, on uint8 batches, by index arithmetic.

Crop-after-padding and flip are one gather: each output pixel's source row/column is computed
(offset, reflection or out-of-range mask, flipped column order), so no padded copy of the batch is
ever made. The gather emits (B, H, W, C), whose NCHW view is already channels_last.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..preprocessing import normalize  # noqa: F401  (re-exported: the batch pipeline's normalisation)


@dataclass
class AugmentConfig:
    crop_padding: int = 4        # He et al. 2015: pad 4 px, random 32x32 crop
    pad_mode: str = "zeros"      # "zeros" (torchvision RandomCrop default) or "reflect"
    flip: bool = True
    cutout: int = 0              # side of the square zeroed after normalisation (DeVries & Taylor 2017)

    def __post_init__(self) -> None:
        if self.pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros' or 'reflect', got {self.pad_mode!r}")


def _source_index(base: torch.Tensor, offset: torch.Tensor, size: int, reflect: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Source index per (image, position) and, for zero padding, a validity mask.

    base: (B, L) output positions in source order (reversed for flipped images); offset: (B,).
    """
    idx = base + offset[:, None]
    if reflect:
        idx = idx.abs()
        idx = torch.where(idx >= size, 2 * (size - 1) - idx, idx)
        return idx, None
    valid = (idx >= 0) & (idx < size)
    return idx.clamp(0, size - 1), valid


def crop_flip(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop (with padding) + horizontal flip of a uint8 batch (B, C, H, W); same shape back."""
    b, c, h, w = images.shape
    dev = images.device
    p = cfg.crop_padding
    # Draw on a CPU generator so a seed gives the same augmentation on every device.
    dy = torch.randint(-p, p + 1, (b,), generator=generator)
    dx = torch.randint(-p, p + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    if not cfg.flip:
        flip.zero_()
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    reflect = cfg.pad_mode == "reflect"
    rows, row_ok = _source_index(torch.arange(h, device=dev).expand(b, h), dy, h, reflect)
    # A flipped image reads its columns right to left; the crop offset applies in source coordinates.
    col_base = torch.arange(w, device=dev).expand(b, w)
    col_base = torch.where(flip[:, None], col_base.flip(1), col_base)
    cols, col_ok = _source_index(col_base, dx, w, reflect)
    n = torch.arange(b, device=dev)[:, None, None]
    out = images[n, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    if row_ok is not None and col_ok is not None:
        ok = row_ok[:, :, None] & col_ok[:, None, :]
        out = out * ok[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size×size square per image (centre uniform over the image, clipped at borders)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (b,), generator=generator).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= (cy - size // 2)[:, None]) & (ys < (cy - size // 2 + size)[:, None])
    in_x = (xs >= (cx - size // 2)[:, None]) & (xs < (cx - size // 2 + size)[:, None])
    mask = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * mask[:, None].to(x.dtype)
