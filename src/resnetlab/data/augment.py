"""Batched augmentation on the device, on uint8 batches, by index arithmetic.

Crop-after-padding and flip are one gather: each output pixel's source row/column is computed
(offset, reflection or out-of-range mask, flipped column order), so no padded copy of the batch is
ever made. The gather emits (B, H, W, C), whose NCHW view is already channels_last.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from ..schema import keys_of, setting


@dataclass
class AugmentConfig:
    crop_padding: int = setting(4, range=(0, 64), help="pad by N px, then a random crop of the original size "
                                "(He et al. 2015: 4)")
    pad_mode: Literal["zeros", "reflect"] = setting("zeros", help="padding of the crop: zeros (torchvision "
                                                    "RandomCrop's default) or reflect")
    flip: bool = setting(True, help="random horizontal flips")
    cutout: int = setting(0, range=(0, 4096), help="side of the square zeroed after normalisation (DeVries & "
                          "Taylor 2017); 0 = off")
    jpeg: float = setting(0.0, range=(0, 1), help="share of images JPEG-compressed (simulated in the batch, see "
                          "jpeg_compress)")
    jpeg_quality: tuple[float, float] = setting((30, 95), range=(1, 100), length=2, increasing=True,
                                                help="JPEG quality drawn uniformly per image, inclusive")
    resample: float = setting(0.0, range=(0, 1), help="share of images up- then down-sampled (see resample)")
    resample_scale: tuple[float, float] = setting((1.5, 4.0), range=(1, 16), length=2, increasing=True,
                                                  help="upscale factor drawn per batch")
    artifacts_from_epoch: int = setting(0, range=(0, None), help="jpeg/resample/noise only from this (0-based) "
                                        "epoch on: learn on clean images first, then become robust while the "
                                        "learning rate anneals")
    flip_mode: Literal["random", "alternate"] = setting("random", help="alternate: each image mirrored in every "
                                                        "other epoch (see BatchLoader)")
    epoch_sizes: tuple[int, ...] = setting((), range=(8, 4096), help="progressive resizing: image side for each "
                                           "of the first epochs (downscaled: cheaper steps); later epochs at full size")
    noise: float = setting(0.0, range=(0, 1), help="share of images with Gaussian pixel noise (a camera's sensor "
                           "noise)")
    noise_std: tuple[float, float] = setting((0, 8), range=(0, 64), length=2, increasing=True,
                                             help="its standard deviation in grey levels, drawn per image")

    @property
    def artifacts(self) -> bool:
        return bool(self.jpeg or self.resample or self.noise)

    def __post_init__(self) -> None:
        for key in keys_of(AugmentConfig):  # built in Python (not from a recipe): the declared choices still hold
            if key.choices and getattr(self, key.name) not in key.choices:
                raise ValueError(f"{key.name} must be one of {', '.join(key.choices)}, got {getattr(self, key.name)!r}")


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


def crop_flip(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
              flips: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop (with padding) + horizontal flip of a uint8 batch (B, C, H, W); same shape back.
    flips: which images to mirror, when the caller decides (alternating flips); else drawn here."""
    b, c, h, w = images.shape
    dev = images.device
    p = cfg.crop_padding
    # Draw on a CPU generator so a seed gives the same augmentation on every device.
    dy = torch.randint(-p, p + 1, (b,), generator=generator)
    dx = torch.randint(-p, p + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    if flips is not None:
        flip = flips.cpu().bool()
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


# Quantisation tables of ITU-T T.81 (JPEG) Annex K, tables K.1 (luminance) and K.2 (chrominance), the
# ones libjpeg and PIL scale by the quality setting.
_LUMA_Q = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA_Q = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def _dct_matrix(device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II; D @ B @ D.T is JPEG's forward transform of a block B."""
    k = torch.arange(8, dtype=torch.float32, device=device)[:, None]
    n = torch.arange(8, dtype=torch.float32, device=device)[None, :]
    d = torch.cos(torch.pi * (2 * n + 1) * k / 16) * (2 / 8) ** 0.5
    d[0] = (1 / 8) ** 0.5
    return d


def _quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 8, 8) luma and chroma tables for per-image qualities 1..100, scaled as libjpeg does."""
    q = quality.float()[:, None, None]
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    out = []
    for base in (_LUMA_Q, _CHROMA_Q):
        t = torch.tensor(base, dtype=torch.float32, device=quality.device).view(1, 8, 8)
        out.append(((t * scale + 50) / 100).floor().clamp(1, 255))
    return out[0], out[1]


def _blockwise(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Forward DCT, quantise/dequantise with the per-image table, inverse DCT: (B, H, W), H, W % 8 == 0."""
    b, h, w = plane.shape
    blocks = plane.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ (blocks - 128) @ d.T
    t = table[:, None, None]
    coef = torch.round(coef / t) * t
    return (d.T @ coef @ d + 128).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def jpeg_compress(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """What a JPEG encoder and decoder do to a uint8 batch (B, 3, H, W) at per-image quality (B,), batched:
    RGB→YCbCr (JFIF), 4:2:0 chroma subsampling, 8×8 DCT, quantisation by the scaled Annex K tables,
    and back (chroma upsampled with the triangle filter libjpeg's "fancy upsampling" uses).

    Not bit-exact with libjpeg (its integer DCT and rounding differ slightly), but the same losses:
    a model trained on it meets JPEG artefacts before its users' photos show them."""
    x = images.float()
    b, _, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    r, g, bl = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * bl
    d = _dct_matrix(x.device)
    luma_t, chroma_t = _quant_tables(quality.to(x.device))
    y = _blockwise(y, luma_t, d)
    chroma = torch.nn.functional.avg_pool2d(torch.stack([cb, cr], 1), 2)
    chroma = torch.stack([_blockwise(chroma[:, i].contiguous(), chroma_t, d) for i in range(2)], 1)
    chroma = torch.nn.functional.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return rgb[:, :, :h, :w].round().clamp(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=64)
def _resample_operator(n: int, factor: float) -> torch.Tensor:
    """(n, n) matrix A with A @ v = v upscaled by `factor` (bicubic) then antialiased back to n: both
    steps are linear and separable, so the round trip of a whole image is A @ X @ A.T, two small
    matmuls instead of interpolating every image at factor× its size (10× cheaper at ×4, measured)."""
    basis = torch.eye(n).view(n, 1, 1, n)
    big = torch.nn.functional.interpolate(basis, size=(1, round(n * factor)), mode="bicubic", align_corners=False)
    small = torch.nn.functional.interpolate(big, size=(1, n), mode="bilinear", align_corners=False, antialias=True)
    return small.view(n, n).T.contiguous()


def resample(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Upscale by `factor` (bicubic), then back down with an antialiased filter: the softening a photo
    gets on its way from another size to the model's input size."""
    h, w = images.shape[-2:]
    rows = _resample_operator(h, factor).to(images.device)
    cols = _resample_operator(w, factor).to(images.device)
    out = rows @ images.float() @ cols.T
    return out.round().clamp(0, 255).to(torch.uint8)


def add_noise(images: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of a per-image standard deviation (grey levels), rounded back to uint8."""
    noise = torch.randn(images.shape, generator=generator).to(images.device) * std.view(-1, 1, 1, 1)
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def photo_artifacts(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Resampling, sensor noise and JPEG compression (in that order, as in a camera's or an upload's
    pipeline), each applied to a random share of a uint8 batch."""
    b = len(images)
    copied = False  # each step writes into its share of the batch: copy the caller's batch once, first

    def writable() -> torch.Tensor:
        nonlocal copied
        if not copied:
            copied = True
            return images.clone()
        return images

    if cfg.resample > 0:
        pick = (torch.rand(b, generator=generator) < cfg.resample).to(images.device)
        lo, hi = cfg.resample_scale
        factor = lo + (hi - lo) * float(torch.rand((), generator=generator))
        factor = round(factor * 4) / 4  # quarter steps: a handful of cached operators
        if pick.any():
            images = writable()
            images[pick] = resample(images[pick], factor)
    if cfg.noise > 0:
        pick = (torch.rand(b, generator=generator) < cfg.noise).to(images.device)
        lo, hi = cfg.noise_std
        std = (lo + (hi - lo) * torch.rand(b, generator=generator)).to(images.device)
        if pick.any():
            images = writable()
            images[pick] = add_noise(images[pick], std[pick], generator)
    if cfg.jpeg > 0:
        pick = (torch.rand(b, generator=generator) < cfg.jpeg).to(images.device)
        lo, hi = cfg.jpeg_quality
        quality = torch.randint(int(lo), int(hi) + 1, (b,), generator=generator).to(images.device)
        if pick.any():
            images = writable()
            images[pick] = jpeg_compress(images[pick], quality[pick])
    return images
