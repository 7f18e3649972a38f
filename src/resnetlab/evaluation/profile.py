"""Parameters and MACs of a model, counted from the model itself rather than by hand."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, in_channels: int = 3, device: str | torch.device = "cpu") -> int:
    """Multiply-accumulates of one forward pass on one image (device "meta" for a model built there: shapes
    only, no arithmetic).

    torch.utils.flop_counter counts FLOPs as 2 per multiply-add (convs and matmuls only), so
    MACs = FLOPs / 2 — the convention of the papers' "1.8 GFLOPs" for ResNet-18, which are MACs.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, input_size, input_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_train_flops(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """FLOPs (2 per multiply-add, convs and matmuls) of one training step's forward and backward on one image.

    Counted on a real backward rather than as 3x the forward (the usual estimate: forward, input gradient,
    weight gradient), because autograd skips what nothing needs: weight gradients of frozen layers (a
    fine-tuning stage, a fixed whitening layer) and input gradients below the lowest trainable layer.
    Runs in eval mode (batch-norm statistics do not change the count, and one image is enough).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, input_size, input_size)
    try:
        with FlopCounterMode(display=False) as counter:
            out = model(x)
            if out.requires_grad:
                out.float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counter.get_total_flops()


@torch.no_grad()
def activation_bytes(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Bytes of the largest tensor any module outputs for one image in an eval-mode forward (fp32)."""
    largest = in_channels * input_size * input_size

    def hook(module, inputs, output) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        model(torch.zeros(1, in_channels, input_size, input_size, device=p.device if p is not None else "cpu"))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return largest * 4
