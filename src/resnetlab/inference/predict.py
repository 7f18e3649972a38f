"""Using a trained model from an application: `resnetlab.load(CKPT).predict(images)`.

Everything comes from the checkpoint (architecture, class names, normalisation, input size and the
resize policy), and images go through resnetlab.decoding and resnetlab.preprocessing exactly as the model's
test images did in training, so a file gives the prediction `eval` gives for the same pixels. `resnetlab predict` is a thin
layer over this.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import torch
from PIL import Image

from ..errors import UserError
from ..models import load_model
from ..decoding import EXTENSIONS, ImageDecodeError, load_uint8
from ..preprocessing import model_input
from ..runtime import select_device
from ..weights import resolve_checkpoint
from .classifier import ImageClassifier, ImageLike
from .explain import METHODS, Explanation, gradcam, heatmap, overlay



def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    paths = list(paths)
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such image file or folder")
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(EXTENSIONS)})")
    return files


class Classifier(ImageClassifier):
    """A checkpoint ready for inference in PyTorch. Thread-safe: forward passes are serialised by a
    lock, so one Classifier can serve several threads (a web server's workers)."""

    backend = "torch"

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 64) -> None:
        self.path = resolve_checkpoint(checkpoint)
        self.device = select_device(device)
        self.model, metadata = load_model(self.path, self.device)
        # On a CPU, oneDNN's convolutions mostly run faster on channels-last tensors (benchmarks/inference_layout.py:
        # a ResNet-18 at 224 px 1.48x at batch 1 and 1.54x at 8, a ResNet-20 at 32 px 1.09x and 1.23x, the
        # ResNet-9 at batch 1 0.95x); other devices keep the layout they load with (not measured).
        self.layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = self.model.to(memory_format=self.layout)
        super().__init__(metadata, batch_size)
        self._lock = threading.Lock()

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        x = model_input(pixels.to(self.device), self.metadata.mean, self.metadata.std, self.input_size)
        return x.contiguous(memory_format=self.layout)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a uint8 (N, 3, H, W) batch of decoded pixels."""
        x = self._input(batch)
        with self._lock:
            return self.model(x).float().cpu()

    def explain(self, images: ImageLike | Sequence[ImageLike], method: str = "gradcam",
                target: int | str | None = None) -> list[Explanation]:
        """Grad-CAM of each image (a path, PIL image or HxWxC uint8 array, or a list of them) for `target` (a class
        name or index; None: the class the model predicts for it). The heat maps are at each image's own size."""
        if method not in METHODS:
            raise UserError(f"unknown explanation method {method!r}; choose {', '.join(METHODS)}")
        fixed = self.target_index(target)
        seq = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
        out: list[Explanation] = []
        for i in range(0, len(seq), self.batch_size):
            originals = [self.original(im) for im in seq[i:i + self.batch_size]]
            pixels = torch.stack([self.pixels(im) for im in originals])
            x = self._input(pixels)
            with self._lock:
                with torch.no_grad():
                    probs = self.model(x).float().softmax(1).cpu()
                targets = probs.argmax(1) if fixed is None else torch.full((len(x),), fixed)
                cams = gradcam(self.model, x.float(), targets)
            for img, cam, t, p in zip(originals, cams, targets.tolist(), probs):
                heat = heatmap(cam, img.size)
                out.append(Explanation(t, self.classes[t], float(p[t]), heat, overlay(img, heat)))
        return out


def load(checkpoint: str | Path, device: str = "auto", batch_size: int = 64,
         backend: str = "auto") -> ImageClassifier:
    """`clf = resnetlab.load("runs/x/best.safetensors")`; then `clf.predict(images, top_k=5)`.

    backend: "torch" (a .safetensors checkpoint), "onnx" (a .onnx file from `resnetlab export`, run by
    ONNX Runtime) or "auto" (by the file's suffix)."""
    if backend == "auto":
        backend = "onnx" if str(checkpoint).endswith(".onnx") else "torch"
    if backend == "onnx":
        from .onnx_runtime import OnnxClassifier
        return OnnxClassifier(checkpoint, batch_size)
    if backend != "torch":
        raise UserError(f"unknown backend {backend!r}; choose torch, onnx or auto")
    return Classifier(checkpoint, device, batch_size)


def predict(checkpoint: str | Path, paths: list[str], top_k: int = 3, batch_size: int = 256,
            device: str = "cpu", max_pixels: int = 40_000_000, explain_dir: str | Path | None = None) -> list[dict]:
    """`resnetlab predict`: files and folders → [{"file", "top": [{"class", "prob"}]}], in order (device: the
    PyTorch backend's; an .onnx file runs in ONNX Runtime on the CPU). A file that
    cannot be decoded, or declares more than max_pixels, gets {"file", "error"} instead and the rest go on.
    explain_dir: also write each file's Grad-CAM overlay there as <name>.cam.png ({"explanation": path})."""
    if not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top-k must be a positive integer, got {top_k!r}")
    clf = load(checkpoint, device, batch_size)  # whatever `load` takes: a checkpoint, a run folder, an .onnx file
    files = collect_images(paths)
    if explain_dir is not None:
        from .explain import require_captum
        if clf.backend != "torch":
            clf.explain([])  # its one-line refusal, before any work
        require_captum()  # refuse before any work when Captum is missing
        explain_dir = Path(explain_dir)
        if explain_dir.exists() and not explain_dir.is_dir():
            raise UserError(f"{explain_dir}: is a file; --explain takes a folder to write overlays into")
        explain_dir.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    out: list[dict] = []
    for i in range(0, len(files), batch_size):  # decoded one batch at a time
        good: list[tuple[int, torch.Tensor]] = []
        for f in files[i:i + batch_size]:
            try:
                good.append((len(out), torch.from_numpy(load_uint8(f, clf.policy, max_pixels).copy())))
                out.append({"file": str(f)})
            except ImageDecodeError as e:
                out.append({"file": str(f), "error": f"cannot read image ({e})"})
        if good:
            for (j, _), r in zip(good, clf.predict(torch.stack([x for _, x in good]), top_k)):
                out[j]["top"] = [{"class": t["class"], "prob": round(t["prob"], 4)} for t in r["top"]]
            if explain_dir is not None:
                for (j, _), e in zip(good, clf.explain([out[j]["file"] for j, _ in good])):
                    stem, n = Path(out[j]["file"]).stem, 2
                    name = f"{stem}.cam.png"
                    while name in names:  # same file name in two folders
                        name, n = f"{stem}-{n}.cam.png", n + 1
                    names.add(name)
                    atomic_save_png(e.overlay, explain_dir / name)
                    out[j]["explanation"] = {"file": str(explain_dir / name), "class": e.label}
    return out


def atomic_save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
