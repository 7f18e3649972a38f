"""Top-k accuracy, loss, per-class accuracy and confusion matrix over a whole loader."""
from __future__ import annotations

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


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, tta: bool = False,
             amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Evaluate in eval mode; with tta, average the softmax of the image and its mirror. In a distributed
    run each rank evaluates its block of the split and the sums are all-reduced: every rank reports the
    figures of the whole split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
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
                probs = (logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2
                logits = probs.clamp_min(1e-12).log()
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
