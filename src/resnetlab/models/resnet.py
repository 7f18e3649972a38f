"""The ResNet family: torchvision-compatible ImageNet ResNets and the CIFAR ResNets of He et al. 2015.

One `ResNet` class serves both: the stem ("imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv,
no pool), the stage widths and the block type are arguments. Parameter names equal torchvision's so
ImageNet weights load with strict=True.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Type

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, PreActBlock

Block = Type[BasicBlock] | Type[Bottleneck] | Type[PreActBlock]
STEMS = ("imagenet", "cifar")
BLOCK_KINDS = ("standard", "separable")


class ResNet(nn.Module):
    supports_dilation = True  # backbones.FeatureExtractor(output_stride=...) may trade strides for dilation

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
        block_kind: str = "standard",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        if block_kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {block_kind!r}; use one of {', '.join(BLOCK_KINDS)}")
        separable = block_kind == "separable"
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
        # stochastic depth: the drop rate grows linearly with depth, from 0 to drop_path_rate (as in timm,
        # after Huang et al. 2016)
        rates = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            stage_rates, rates = rates[:n_blocks], rates[n_blocks:]
            stage, in_planes = self._make_layer(block, in_planes, width, n_blocks, stride, shortcut, separable,
                                                stage_rates)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        # He et al. 2016: a final BN-ReLU after the last pre-activation unit.
        self.final_bn = nn.BatchNorm2d(in_planes) if self.preact else None
        self.final_relu = nn.ReLU() if self.preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()  # before the classifier
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_layer(block: Block, in_planes: int, planes: int, n_blocks: int, stride: int,
                    shortcut: str, separable: bool = False,
                    drop_paths: Sequence[float] = ()) -> tuple[nn.Sequential, int]:
        blocks = []
        for j in range(n_blocks):
            blocks.append(block(in_planes, planes, stride if j == 0 else 1, shortcut=shortcut, separable=separable,
                                drop_path=drop_paths[j] if drop_paths else 0.0))
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
            x = self.final_relu(self.final_bn(x))
        return torch.flatten(self.avgpool(x), 1)

    def feature_plan(self) -> list[tuple[str, list[str]]]:
        """Feature levels for backbones: (name, child modules run in order). Level 0 is the stem before
        pooling (timm's "act1"), level i the output of stage i (with the final BN-ReLU of a
        pre-activation net folded into its last stage)."""
        plan = [("stem", ["conv1", "bn1", "relu"]), ("layer1", ["maxpool", "layer1"])]
        plan += [(f"layer{i}", [f"layer{i}"]) for i in range(2, self.num_stages + 1)]
        if self.final_bn is not None:
            plan[-1][1].extend(["final_bn", "final_relu"])
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(x)))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised head for num_classes (as timm's reset_classifier)."""
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)


# One table, one builder. Depths from He et al. 2015 (Table 1 for ImageNet, Sec. 4.2 for CIFAR: 6n+2
# layers in three stages of 16/32/64 channels, option A shortcuts); pre-activation from He et al. 2016.
@dataclass(frozen=True)
class Arch:
    block: Block
    layers: tuple[int, ...]
    family: str                      # "imagenet" (224 px, 7x7 stem) or "cifar" (32 px, 3x3 stem)
    defaults: tuple[tuple[str, Any], ...] = ()


def _cifar(depth: int) -> Arch:
    n = (depth - 2) // 6
    return Arch(BasicBlock, (n, n, n), "cifar", (("widths", (16, 32, 64)), ("stem", "cifar"), ("shortcut", "A")))


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(BasicBlock, (2, 2, 2, 2), "imagenet"),
    "resnet34": Arch(BasicBlock, (3, 4, 6, 3), "imagenet"),
    "resnet50": Arch(Bottleneck, (3, 4, 6, 3), "imagenet"),
    "resnet101": Arch(Bottleneck, (3, 4, 23, 3), "imagenet"),
    "resnet152": Arch(Bottleneck, (3, 8, 36, 3), "imagenet"),
    **{f"resnet{d}": _cifar(d) for d in (20, 32, 44, 56, 110, 1202)},
    "preact_resnet18": Arch(PreActBlock, (2, 2, 2, 2), "cifar", (("stem", "cifar"),)),
}


def build_resnet(name: str, num_classes: int | None = None, **kwargs: Any) -> ResNet:
    """The ResNet called `name` in ARCHS; kwargs override the table's defaults (e.g. stem="cifar").
    `option` is the paper's name for the shortcut type of the CIFAR nets ("A" or "B"); `block` is
    "standard" or "separable" (every 3x3 convolution depthwise + pointwise)."""
    arch = ARCHS[name]
    if "option" in kwargs:
        kwargs["shortcut"] = kwargs.pop("option")
    if "block" in kwargs:
        kwargs["block_kind"] = kwargs.pop("block")
    merged = dict(arch.defaults)
    merged.update(kwargs)
    if num_classes is None:
        num_classes = 1000 if arch.family == "imagenet" else 10
    return ResNet(arch.block, arch.layers, num_classes, **merged)


def _factory(name: str):
    def factory(num_classes: int | None = None, **kwargs: Any) -> ResNet:
        return build_resnet(name, num_classes, **kwargs)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: {ARCHS[name].block.__name__} x {list(ARCHS[name].layers)} ({ARCHS[name].family} family)."
    return factory


resnet18, resnet34, resnet50 = _factory("resnet18"), _factory("resnet34"), _factory("resnet50")
resnet101, resnet152 = _factory("resnet101"), _factory("resnet152")
resnet20, resnet32, resnet44 = _factory("resnet20"), _factory("resnet32"), _factory("resnet44")
resnet56, resnet110, resnet1202 = _factory("resnet56"), _factory("resnet110"), _factory("resnet1202")
preact_resnet18 = _factory("preact_resnet18")
