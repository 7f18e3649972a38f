"""Which parameters train: freeze policies for fine-tuning (and, later, detection backbones).

A policy names what trains (the head; the last N stages; everything); the rest is frozen, and the
BatchNorm layers of frozen parts run in eval mode so their pretrained statistics are kept. Works on
any model of the contract (models.contract.ClassifierNet): stages(), get_classifier(), head_extras(),
fixed_parameters().
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import UserError
from .contract import ClassifierNet

STRATEGIES = ("linear-probe", "partial", "full")


def apply_strategy(model: nn.Module, strategy: str, unfreeze_stages: int = 1,
                   freeze_bn_stats: bool = False) -> Callable[[nn.Module], None]:
    """Set requires_grad per strategy; returns a callable that puts frozen parts' BN in eval mode
    (so a linear probe keeps the pretrained statistics), to be re-applied after model.train()."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown freeze strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    stages = model.stages()
    head = model.get_classifier()
    if strategy == "linear-probe":
        trainable: list[nn.Module] = [head]
    elif strategy == "partial":
        if not 1 <= unfreeze_stages <= len(stages):
            raise UserError(f"--unfreeze-stages must be between 1 and {len(stages)} for this model")
        trainable = [head] + list(stages[-unfreeze_stages:]) + list(model.head_extras())
    else:
        trainable = [model]
    return freeze_except(model, trainable, freeze_bn_stats)


def freeze_except(model: nn.Module, trainable: list[nn.Module], freeze_bn_stats: bool = False,
                  freeze_bn_affine: bool = False) -> Callable[[nn.Module], None]:
    """The one freezing rule (fine-tuning strategies and detection backbones): parameters of `trainable`
    train, all others are frozen; BatchNorm layers of frozen parts (every BN with freeze_bn_stats) run in
    eval mode, via the returned callable, to be re-applied after each model.train(); freeze_bn_affine
    also freezes every BN's weight and bias (torchvision's FrozenBatchNorm2d, as detectors use)."""
    # Layers that are fixed by design (ResNet-9's whitening filters) never train, whatever the strategy.
    fixed = {id(p) for m in model.modules() if isinstance(m, ClassifierNet) for p in m.fixed_parameters()}
    if freeze_bn_affine:
        fixed |= {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(id(p) not in fixed)
    trainable_ids = {id(p) for m in trainable for p in m.parameters() if id(p) not in fixed}

    def frozen_bn(m: nn.Module) -> None:
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                frozen = all(id(p) not in trainable_ids for p in mod.parameters())
                if frozen or freeze_bn_stats:
                    mod.eval()
    return frozen_bn


def stage_lr_scales(model: nn.Module, decay: float) -> dict[str, float] | None:
    """Discriminative learning rates by parameter-name prefix: head 1, last stage decay, …, first stage
    decay**K, stem (and anything before the stages) decay**(K+1). None when decay >= 1 (off)."""
    if decay >= 1.0:
        return None
    stage_ids = {id(m): i for i, m in enumerate(model.stages())}
    head = model.get_classifier()
    k = len(stage_ids)
    scales = {}
    for name, child in model.named_children():
        if child is head or not any(True for _ in child.parameters()):
            continue
        i = stage_ids.get(id(child))
        scales[name + "."] = decay ** (k - i) if i is not None else decay ** (k + 1)
    return scales
