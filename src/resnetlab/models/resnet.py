"""The ResNet family: torchvision-compatible ImageNet ResNets and the CIFAR ResNets of He et al. 2015.

One `ResNet` class serves both: the stem ("imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv,
no pool), the stage widths and the block type are arguments. Parameter names equal torchvision's so
ImageNet weights load with strict=True.
"""
from __future__ import annotations

from typing import Sequence, Type

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, PreActBlock

Block = Type[BasicBlock] | Type[Bottleneck] | Type[PreActBlock]
STEMS = ("imagenet", "cifar")


class ResNet(nn.Module):
    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int | None = None,
        shortcut: str = "B",
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        self.stem = stem
        self.preact = block is PreActBlock
        stem_width = stem_width or widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        # Pre-activation nets normalise inside each block, so the stem is a bare conv.
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(stem_width)
        self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

        in_planes = stem_width
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            stage, in_planes = self._make_layer(block, in_planes, width, n_blocks, stride, shortcut)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        # He et al. 2016: a final BN-ReLU after the last pre-activation unit.
        self.final_bn = nn.BatchNorm2d(in_planes) if self.preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_layer(block: Block, in_planes: int, planes: int, n_blocks: int, stride: int,
                    shortcut: str) -> tuple[nn.Sequential, int]:
        blocks = []
        for j in range(n_blocks):
            blocks.append(block(in_planes, planes, stride if j == 0 else 1, shortcut=shortcut))
            in_planes = planes * block.expansion
        return nn.Sequential(*blocks), in_planes

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as identity (Goyal et al. 2017).
            for m in self.modules():
                if hasattr(m, "last_bn"):
                    nn.init.zeros_(m.last_bn().weight)

    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        if self.final_bn is not None:
            x = torch.relu(self.final_bn(x))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


# ImageNet-style ResNets (He et al. 2015, Table 1); stem="cifar" adapts them to 32x32 inputs.
def resnet18(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kw)


def resnet34(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kw)


def resnet50(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kw)


def resnet101(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, **kw)


def resnet152(num_classes: int = 1000, **kw) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, **kw)


def cifar_resnet(depth: int, num_classes: int = 10, option: str = "A", **kw) -> ResNet:
    """He et al. 2015 Sec. 4.2: 6n+2 layers, three stages of 16/32/64 channels on 32x32 inputs."""
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    kw.setdefault("stem", "cifar")
    return ResNet(BasicBlock, [n, n, n], num_classes, widths=(16, 32, 64), shortcut=option, **kw)


def resnet20(num_classes: int = 10, **kw) -> ResNet:
    return cifar_resnet(20, num_classes, **kw)


def resnet32(num_classes: int = 10, **kw) -> ResNet:
    return cifar_resnet(32, num_classes, **kw)


def resnet44(num_classes: int = 10, **kw) -> ResNet:
    return cifar_resnet(44, num_classes, **kw)


def resnet56(num_classes: int = 10, **kw) -> ResNet:
    return cifar_resnet(56, num_classes, **kw)


def resnet110(num_classes: int = 10, **kw) -> ResNet:
    return cifar_resnet(110, num_classes, **kw)


def resnet1202(num_classes: int = 10, **kw) -> ResNet:
    return cifar_resnet(1202, num_classes, **kw)


def preact_resnet18(num_classes: int = 10, **kw) -> ResNet:
    """Pre-activation ResNet-18 (He et al. 2016); CIFAR stem by default, as it is mostly used there."""
    kw.setdefault("stem", "cifar")
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, **kw)
