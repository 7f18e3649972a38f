"""Knowledge distillation (Hinton et al. 2015): a trained teacher's softened predictions as extra targets.

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
The teacher is any resnetlab checkpoint with the same classes in the same order; it runs in eval mode, without
gradients, on the same augmented batch under the same autocast. The batch arrives normalised by the student's
mean/std and at the student's input size; it is re-normalised by the teacher's and resized to the teacher's
input size when they differ. The teacher has no state of its own, so a resumed run reloads it from the recipe's
path and continues exactly; under DDP each rank runs it on its own slice.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..evaluation.profile import count_macs
from ..models import load_model
from ..preprocessing import resize_batch
from ..weights import resolve_checkpoint


def teacher_checkpoint(path: str) -> Path:
    """The teacher's checkpoint file: `path` itself, or the one a run folder holds (as `eval` picks it)."""
    try:
        return resolve_checkpoint(path)
    except UserError as e:
        raise UserError(f"recipe key train.distill.teacher: {e} (a resnetlab .safetensors checkpoint with the "
                        f"same classes, or its run folder)") from None


class Teacher:
    def __init__(self, path: str, classes: list[str], mean, std, device: torch.device, channels_last: bool) -> None:
        model, meta = load_model(path, "cpu")  # a file: prepare_run resolved the recipe's teacher once
        if list(meta.classes) != list(classes):
            raise UserError(f"{path}: the teacher's classes ({len(meta.classes)}: {', '.join(meta.classes[:4])}"
                            f"…) are not this run's ({len(classes)}: {', '.join(classes[:4])}…) in the same order")
        self.input_size = int(meta.input_size)
        self.macs = count_macs(model, self.input_size)
        self.model = model.to(device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        ms, ss = torch.tensor(mean), torch.tensor(std)
        mt, st = torch.tensor(meta.mean), torch.tensor(meta.std)
        # x_teacher = (x * std_s + mean_s - mean_t) / std_t, as one multiply-add per channel
        self.scale = (ss / st).view(1, -1, 1, 1).to(device)
        self.shift = ((ms - mt) / st).view(1, -1, 1, 1).to(device)
        self.same_norm = bool(torch.equal(ms, mt) and torch.equal(ss, st))
        self.path = path

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same_norm:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if x.shape[-1] != self.input_size:
            x = resize_batch(x, self.input_size)
        return self.model(x)

    def flops_per_image(self) -> int:
        return 2 * self.macs


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, alpha: float, temperature: float,
                 label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    ce = F.cross_entropy(student, y, weight=weight, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher.float() / t, 1), log_target=True,
                  reduction="batchmean")
    return (1 - alpha) * ce + alpha * t * t * kl
