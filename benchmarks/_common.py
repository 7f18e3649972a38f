"""Helpers shared by the benchmark scripts: the seeds' per-item PIL dataset, memory readings, the
timing of a training step."""
from __future__ import annotations

import statistics
import time
from typing import Iterable

import numpy as np
import torch
from PIL import Image


def rss_mb() -> float:
    """This process's resident memory in MB (VmRSS)."""
    return process_memory_mb()["rss_mb"]


def process_memory_mb(pid: int | str = "self") -> dict:
    """A process's resident memory in MB: all of it (VmRSS), and its anonymous (heaps, tensors, kernels) and
    file-backed (library code and data paged in) parts."""
    fields = {"VmRSS:": "rss_mb", "RssAnon:": "anon_mb", "RssFile:": "file_mb"}
    out = {v: float("nan") for v in fields.values()}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0] + ":"
            if key in fields:
                out[fields[key]] = int(line.split()[1]) / 1024
    return out


class PILCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array → PIL image → transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])




def median_step_seconds(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        amp: torch.dtype | None, warm: int = 3) -> float:
    """Median wall time of a training step (forward under autocast, cross-entropy, backward, foreach
    SGD step) over `batches`, the first `warm` steps not counted (allocation, kernel choice)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    model.train()
    times = []
    for i, (x, y) in enumerate(batches):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warm:
            times.append(time.perf_counter() - t)
    return statistics.median(times)
