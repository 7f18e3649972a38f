"""From decoded uint8 pixels (resnetlab.decoding) to the tensor a model sees: normalise, resize to its input size.

Training, evaluation, prediction and export all call these, so a batch becomes the same input everywhere.
"""
from __future__ import annotations

import torch


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, C, H, W) → float, (x/255 - mean)/std, folded into one multiply-add per pixel."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device)
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (-mean / std).view(1, -1, 1, 1)
    return images.to(dtype) * scale.to(dtype) + shift.to(dtype)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised (N, C, H, W) → (N, C, size, size), bilinear: how a net whose input size differs from the
    stored images' size sees them, in training, evaluation and prediction alike."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def model_input(images: torch.Tensor, mean, std, input_size: int,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) as decoded → the model's input: normalise, then resize to input_size."""
    return resize_batch(normalize(images, mean, std, dtype), input_size)
