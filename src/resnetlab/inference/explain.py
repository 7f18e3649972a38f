"""Grad-CAM explanations: which part of an image made the model choose a class.

The attribution is Captum's LayerGradCam (Selvaraju et al. 2017) on the output of the model's last stage (the
model contract's `stages()[-1]`, so every family is explained the same way). Captum — PyTorch's own
interpretability library — rather than hand-written hooks: it is maintained against each torch release and
gives the other attribution methods (Integrated Gradients, Occlusion, ...) to anyone who wants to compare.
The coarse map is upsampled bilinearly to the image's own size and scaled to [0, 1]; the overlay blends a
colour map of it with the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UserError
from ..models import ClassifierNet

METHODS = ("gradcam",)


@dataclass
class Explanation:
    """One image explained: the class (index, name, probability), a heat map (H x W float32 in [0, 1] at the
    image's own size) and the overlay (the image with the heat map blended over it, RGB)."""
    index: int
    label: str
    prob: float
    heatmap: np.ndarray
    overlay: Image.Image


def require_captum():
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        raise UserError("explanations need Captum: pip install 'resnetlab[explain]'") from None
    return LayerGradCam


def gradcam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, h, w) of the last stage for the target class of each normalised input in x."""
    if not isinstance(model, ClassifierNet):
        raise UserError("explanations need a resnetlab model (the model contract names its last stage)")
    layer = model.stages()[-1]
    with torch.enable_grad():
        cam = require_captum()(model, layer).attribute(x.detach().requires_grad_(True), target=targets.tolist(),
                                                relu_attributions=True)
    return cam.detach()[:, 0].float()


def heatmap(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One coarse map (h, w) → (H, W) float32 in [0, 1] at size (width, height)."""
    w, h = size
    m = torch.nn.functional.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    m = m.clamp_min(0)
    peak = float(m.max())
    return (m / peak if peak > 0 else m).cpu().numpy().astype(np.float32)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """image with the 'jet' colour map of heat blended over it."""
    from matplotlib import colormaps
    colours = (colormaps["jet"](heat)[..., :3] * 255).astype(np.float32)
    base = np.asarray(image.convert("RGB").resize((heat.shape[1], heat.shape[0])), dtype=np.float32)
    return Image.fromarray(np.clip((1 - alpha) * base + alpha * colours, 0, 255).astype(np.uint8))
