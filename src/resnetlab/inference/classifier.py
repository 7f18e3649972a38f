"""What every classifier backend shares (PyTorch in predict.py, ONNX Runtime in onnx_runtime.py): the
checkpoint's metadata, decoding by its resize policy, batching and top-k."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..models import CheckpointMeta
from ..decoding import ImageDecodeError, ResizePolicy, load_uint8, open_rgb

ImageLike = str | Path | Image.Image | np.ndarray


class ImageClassifier:
    """What every backend shares: metadata, decoding by the checkpoint's policy, batching, top-k.
    A backend supplies `logits(uint8 batch)`; `backend` names it."""

    backend = ""

    def __init__(self, metadata: CheckpointMeta, batch_size: int = 64) -> None:
        self.metadata = metadata
        self.classes: list[str] = list(metadata.classes)
        self.input_size: int = metadata.input_size
        self.policy: ResizePolicy = metadata.policy
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def explain(self, images: ImageLike | Sequence[ImageLike], method: str = "gradcam",
                target: int | str | None = None) -> list:
        """Per image an Explanation (inference.explain): needs the PyTorch model (see Classifier)."""
        raise UserError(f"explanations need the PyTorch model (a .safetensors checkpoint); the {self.backend} "
                        f"backend cannot compute gradients")

    def target_index(self, target: int | str | None) -> int | None:
        """A class to explain, by index or name, checked; None: each image's predicted class."""
        if target is None:
            return None
        if isinstance(target, str) and target in self.classes:
            return self.classes.index(target)
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(self.classes):
            return target
        raise UserError(f"target {target!r} is not one of the model's classes (a name, or an index below "
                        f"{len(self.classes)})")

    def pixels(self, image: ImageLike) -> torch.Tensor:
        """One image as the uint8 (3, S, S) tensor the model's preprocessing starts from."""
        image = _from_array(image)
        try:
            return torch.from_numpy(load_uint8(image, self.policy).copy())
        except ImageDecodeError as e:  # only files can fail to decode
            raise UserError(f"{image}: cannot decode image ({e})") from None

    def original(self, image: ImageLike) -> Image.Image:
        """One image decoded at its own size (EXIF orientation applied, RGB): what explanations are drawn on."""
        image = _from_array(image)
        try:
            return open_rgb(image)
        except ImageDecodeError as e:
            raise UserError(f"{image}: cannot decode image ({e})") from None

    def predict(self, images: ImageLike | Sequence[ImageLike] | torch.Tensor, top_k: int = 5) -> list[dict[str, Any]]:
        """Top-k classes and probabilities per image.

        images: a path, PIL image or HxWxC uint8 numpy array, a list of them, or a tensor batch of pixels
        (N, 3, H, W), uint8 0-255 or float 0-1 (resized by the checkpoint's policy when H, W differ).
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise UserError(f"top-k must be a positive integer, got {top_k!r}")
        k = min(top_k, len(self.classes))
        if isinstance(images, torch.Tensor):
            pixels = self._tensor_pixels(images)
            batches = (pixels[i:i + self.batch_size] for i in range(0, len(pixels), self.batch_size))
        else:
            seq = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
            # decoded one batch at a time, so a large folder never sits decoded in memory
            batches = (torch.stack([self.pixels(im) for im in seq[i:i + self.batch_size]])
                       for i in range(0, len(seq), self.batch_size))
        out = []
        for batch in batches:
            probs = self.logits(batch).softmax(1)
            top = probs.topk(k, dim=1)
            for p, idx in zip(top.values.tolist(), top.indices.tolist()):
                out.append({"top": [{"class": self.classes[j], "prob": q} for q, j in zip(p, idx)]})
        return out

    def _tensor_pixels(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 4 or t.shape[1] != 3:
            raise UserError(f"a tensor batch must be (N, 3, H, W), got {tuple(t.shape)}")
        if t.dtype != torch.uint8:
            t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
        s = self.policy.input_size
        if t.shape[-2:] != (s, s):
            t = torch.stack([torch.from_numpy(load_uint8(Image.fromarray(x.permute(1, 2, 0).numpy()), self.policy).copy())
                             for x in t.cpu()])
        return t


def _from_array(image: ImageLike) -> str | Path | Image.Image:
    if not isinstance(image, np.ndarray):
        return image
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise UserError(f"numpy image must be uint8 HxW or HxWxC (C = 1, 3 or 4), got {image.dtype} {image.shape}")
    return Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
