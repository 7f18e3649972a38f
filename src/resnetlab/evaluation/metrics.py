"""Top-k accuracy, loss, per-class accuracy and confusion matrix over a whole loader."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import all_reduce_sum, autocast_for


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    n: int
    confusion: torch.Tensor = field(repr=False)  # (C, C): rows true class, columns predicted

    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp_min(1)
        return (self.confusion.diag() / totals).tolist()

    def summary(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "n": self.n}


def tta_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """The test-time views: the image and its mirror, and with shift > 0 also both moved by ±shift pixels
    along both axes (reflect-padded), as airbench's strongest TTA does (Jordan 2024): 2 or 6 views."""
    views = [x, x.flip(3)]
    if shift:
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        h, w = x.shape[-2:]
        for dy, dx in ((0, 0), (2 * shift, 2 * shift)):
            moved = padded[..., dy:dy + h, dx:dx + w]
            views += [moved, moved.flip(3)]
    return views


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, tta: bool = False,
             amp_dtype: torch.dtype | None = None, tta_shift: int = 0) -> EvalResult:
    """Evaluate in eval mode; with tta, average the softmax of the image and its mirror (and, with
    tta_shift, of both moved by ±tta_shift pixels: 6 views). In a distributed
    run each rank evaluates its block of the split and the sums are all-reduced: every rank reports the
    figures of the whole split."""
    was_training = model.training
    model.eval()
    anchor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = anchor.device if anchor is not None else torch.device("cpu")
    k = min(5, num_classes)
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    n = 0
    for x, y in loader:
        with autocast_for(device, amp_dtype):
            logits = model(x).float()
            if tta:
                views = tta_views(x, tta_shift)
                probs = logits.softmax(1)
                for v in views[1:]:
                    probs += model(v).float().softmax(1)
                logits = (probs / len(views)).clamp_min(1e-12).log()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(k, dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        correct5 += (top == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes**2)
        n += len(y)
    model.train(was_training)
    count = torch.tensor(n, dtype=torch.long, device=device)
    all_reduce_sum(correct1, correct5, loss_sum, confusion, count)
    n = max(int(count.item()), 1)
    return EvalResult(top1=correct1.item() / n, top5=correct5.item() / n, loss=loss_sum.item() / n,
                      n=n, confusion=confusion.view(num_classes, num_classes).cpu())
