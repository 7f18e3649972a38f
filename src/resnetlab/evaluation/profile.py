"""Parameters, MACs and speed of a model, measured rather than hand-counted."""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image.

    torch.utils.flop_counter counts FLOPs as 2 per multiply-add (convs and matmuls only), so
    MACs = FLOPs / 2 — the convention of the papers' "1.8 GFLOPs" for ResNet-18, which are MACs.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, input_size, input_size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def measure_throughput(model: nn.Module, batch_size: int, input_size: int, device: str = "cpu",
                       dtype: torch.dtype | None = None, channels_last: bool = False,
                       warmup: int = 2, iters: int = 5) -> float:
    """Inference images/second at a batch size (eval mode, optional autocast dtype)."""
    model.eval().to(device)
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (torch.autocast(device_type=torch.device(device).type, dtype=dtype) if dtype
           else torch.autocast(device_type=torch.device(device).type, enabled=False))
    with ctx:
        for _ in range(warmup):
            model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        _sync(device)
    return batch_size * iters / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
