"""Optimizers, learning-rate schedules (as a pure function of the step), an EMA of weights and Lookahead.

The schedule is a function of the global step rather than a stateful torch scheduler: resuming only
needs the step count, and train/finetune share it unchanged.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.optim.sgd import sgd as sgd_update
from torch import nn

from .config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, cfg: OptimConfig, lr_scales: dict[str, float] | None = None
                 ) -> list[dict]:
    """Trainable parameters grouped by (lr scale, weight decay, update rule).

    lr_scales maps a parameter-name prefix to a multiplier (discriminative fine-tuning); the longest
    matching prefix wins. no_decay_bn_bias puts BN/bias parameters (ndim <= 1) in a decay-free group.
    With optim.name muon the conv filters (4-D) form groups of their own ("muon": True) whose lr is
    muon_lr (its lr_scale relative to optim.lr), without weight decay: Muon renormalises them each step.
    bias_lr, when set, is the peak lr of BN parameters and biases (ndim <= 1) instead of optim.lr.
    """
    groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        if lr_scales:
            matches = [k for k in lr_scales if name.startswith(k)]
            if matches:
                scale = lr_scales[max(matches, key=len)]
        muon = cfg.name == "muon" and p.ndim == 4
        wd = 0.0 if muon or (cfg.no_decay_bn_bias and p.ndim <= 1) else cfg.weight_decay
        if muon:
            scale *= cfg.muon_lr / cfg.lr
        elif p.ndim <= 1 and cfg.bias_lr:
            scale *= cfg.bias_lr / cfg.lr
        groups.setdefault((scale, wd, muon), []).append(p)
    return [{"params": ps, "lr_scale": s, "weight_decay": wd, "lr": cfg.lr * s, "muon": m}
            for (s, wd, m), ps in groups.items()]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    # foreach implementations batch the per-parameter updates into a few kernels.
    if cfg.name == "muon":
        return Muon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                    muon_momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps)
    groups = [{k: v for k, v in g.items() if k != "muon"} for g in groups]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, foreach=True)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, foreach=True)


# Quintic Newton-Schulz coefficients of Muon (Jordan et al. 2024, kellerjordan.github.io/posts/muon):
# chosen for the steepest slope at 0, so 3-5 steps push every singular value into about [0.7, 1.2].
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int) -> torch.Tensor:
    """An approximation of U V^T for the 2-D matrix g = U S V^T (its singular values moved near 1), by
    `steps` quintic Newton-Schulz iterations in float32 on the wide orientation of g."""
    a, b, c = NS_COEFFS
    tall = g.shape[0] > g.shape[1]
    x = g.float().T if tall else g.float()
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm = 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon on the groups marked "muon" (conv filters), SGD on the others, as one optimizer (one state to
    checkpoint, one set of groups for the schedule). torch.optim.Muon takes 2-D parameters only; here
    each (out, in, kh, kw) filter bank is updated as the matrix (out, in·kh·kw).

    A Muon step, as airbench94_muon takes it (Jordan 2024): Nesterov momentum muon_momentum on the
    gradient, the filter bank rescaled to Frobenius norm sqrt(out) (every filter here feeds a BatchNorm,
    so the scale carries no information and the step size stays relative), then a step of lr along the
    orthogonalised momentum. The other groups take torch's own SGD update (momentum, nesterov, their
    weight decay)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool,
                 muon_momentum: float, ns_steps: int) -> None:
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0,
                                      muon=False, muon_momentum=muon_momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 (the Optimizer signature)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            if not group["muon"]:
                sgd_update(params, [p.grad for p in params], bufs, weight_decay=group["weight_decay"],
                                    momentum=group["momentum"], lr=group["lr"], dampening=0.0,
                                    nesterov=group["nesterov"], maximize=False, foreach=True)
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
                continue
            mom = group["muon_momentum"]
            for p, buf in zip(params, bufs):
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                buf.mul_(mom).add_(p.grad)
                d = p.grad.add(buf, alpha=mom) if group["nesterov"] else buf
                p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
                p.add_(orthogonalize(d.reshape(len(d), -1), group["ns_steps"]).view_as(p), alpha=-group["lr"])

    def step_flops(self) -> int:
        """Floating-point operations of the Newton-Schulz iterations of one step (training compute too)."""
        total = 0
        for group in self.param_groups:
            if group["muon"]:
                for p in group["params"]:
                    m, n = sorted((p.shape[0], p[0].numel()))
                    total += group["ns_steps"] * 2 * (2 * m * m * n + m ** 3)
        return total


def optimizer_step_flops(opt: torch.optim.Optimizer) -> int:
    """FLOPs an optimizer spends per step beyond elementwise updates (Muon's orthogonalisation; else 0)."""
    return opt.step_flops() if isinstance(opt, Muon) else 0


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
