"""Optimizers, learning-rate schedules (as a pure function of the step), an EMA of weights and Lookahead.

The schedule is a function of the global step rather than a stateful torch scheduler: resuming only
needs the step count, and train/finetune share it unchanged.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, cfg: OptimConfig, lr_scales: dict[str, float] | None = None
                 ) -> list[dict]:
    """Trainable parameters grouped by (lr scale, weight decay).

    lr_scales maps a parameter-name prefix to a multiplier (discriminative fine-tuning); the longest
    matching prefix wins. no_decay_bn_bias puts BN/bias parameters (ndim <= 1) in a decay-free group.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        if lr_scales:
            matches = [k for k in lr_scales if name.startswith(k)]
            if matches:
                scale = lr_scales[max(matches, key=len)]
        wd = 0.0 if (cfg.no_decay_bn_bias and p.ndim <= 1) else cfg.weight_decay
        groups.setdefault((scale, wd), []).append(p)
    return [{"params": ps, "lr_scale": s, "weight_decay": wd, "lr": cfg.lr * s}
            for (s, wd), ps in groups.items()]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # foreach implementations batch the per-parameter updates into a few kernels.
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, foreach=True)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, foreach=True)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at global step `step` (0-based)."""
    unit = steps_per_epoch if cfg.unit == "epoch" else 1
    warmup = cfg.warmup * unit
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "multistep":
        return cfg.gamma ** sum(step >= m * unit for m in cfg.milestones)
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = cfg.final_lr_frac
    if cfg.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    # onecycle: linear rise to the peak over pct_start of training, then linear decay (Smith 2018).
    if step < cfg.pct_start * total_steps:
        return 0.1 + 0.9 * step / max(1.0, cfg.pct_start * total_steps)
    rest = (step - cfg.pct_start * total_steps) / max(1.0, (1 - cfg.pct_start) * total_steps)
    return max(floor, 1.0 - (1 - floor) * rest)


class EMA:
    """Exponential moving average of parameters; buffers (BN statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - self.decay)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)


class Lookahead:
    """Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back") with the pull
    airbench uses (Jordan 2024): every `every` steps a slow copy moves toward the live ("fast") net by
    1 - d and the net restarts from it. d rises with the cube of training progress, d = decay**every *
    progress**3, so early steps run free and late ones are averaged; after the last step the net *is* the
    slow copy. Unlike our EMA (a separate model for evaluation), the average is fed back into training,
    and BN statistics are averaged with the weights (every floating-point state entry), so the result
    needs no statistics of its own."""

    def __init__(self, model: nn.Module, every: int, decay: float) -> None:
        self.every, self.decay = every, decay
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def pull(self, step: int, total: int) -> float | None:
        """The d used after global step `step` (1-based count of steps done), or None: no update then."""
        if step >= total:
            return 1.0
        if step % self.every:
            return None
        return self.decay ** self.every * (step / total) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, total: int) -> None:
        d = self.pull(step, total)
        if d is None:
            return
        live = model.state_dict()
        slow = list(self.slow.values())
        fast = [live[k] for k in self.slow]
        torch._foreach_lerp_(slow, fast, 1.0 - d)
        for f, s in zip(fast, slow):
            f.copy_(s)
