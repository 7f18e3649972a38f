"""Distributed data parallel pieces the engine uses: the model wrapper and a synchronised BatchNorm
that also works on CPU (gloo).

torch's SyncBatchNorm only runs on GPUs; `GlobalBatchNorm2d` computes the batch statistics over the
whole global batch with two all-reduces (sums forward, gradient sums backward), so N ranks normalise
exactly as one process does over the same images. It subclasses BatchNorm2d and keeps its parameter and
buffer names, so checkpoints are interchangeable with single-process runs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..runtime import DistContext, all_reduce_sum, dist_context


class _GlobalBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, momentum: float):
        c = x.shape[1]
        xd = x.double()
        dims = (0, 2, 3)
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           torch.tensor([x.numel() / c], dtype=torch.float64, device=x.device)])
        all_reduce_sum(stats)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = var * total / (total - 1).clamp_min(1)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        invstd = (var + eps).rsqrt().float()
        xhat = (x.float() - mean.float().view(1, c, 1, 1)) * invstd.view(1, c, 1, 1)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total = total
        return xhat * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)

    @staticmethod
    def backward(ctx, dy):
        xhat, weight, invstd = ctx.saved_tensors
        c = xhat.shape[1]
        dims = (0, 2, 3)
        dy = dy.float()
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grads = torch.cat([sum_dy, sum_dy_xhat]).double()
        all_reduce_sum(grads)  # d(sum of every rank's loss)/dx needs the global sums
        g_dy, g_dy_xhat = (grads[:c] / ctx.total).float(), (grads[c:] / ctx.total).float()
        dx = (dy - g_dy.view(1, c, 1, 1) - xhat * g_dy_xhat.view(1, c, 1, 1)) * (weight * invstd).view(1, c, 1, 1)
        # parameter gradients stay local: DDP averages them over ranks like every other parameter's
        return dx, sum_dy_xhat, sum_dy, None, None, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's slice of the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist_context().enabled and self.track_running_stats and self.affine):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                                      momentum)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d → a synchronised one, keeping the same parameter objects (freeze flags and
    optimizer groups built later see them) and names (checkpoints stay interchangeable)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=child.running_mean.device
                                    if child.running_mean is not None else None)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_bn(child, device)
    return model


def wrap(model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module the training step calls: DistributedDataParallel over `model` (which must already hold
    its synchronised BNs). Gradients are averaged over ranks after every backward."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=not sync_bn)
