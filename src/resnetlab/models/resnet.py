"""The ResNet family: torchvision-compatible ImageNet ResNets and the CIFAR ResNets of He et al. 2015.

One `ResNet` class serves both: the stem ("imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv,
no pool), the stage widths and the block type are arguments. Parameter names equal torchvision's so
ImageNet weights load with strict=True.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence, Type

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, PreActBlock, ResidualBlock, bn_scales, set_norm_act
from .contract import ClassifierNet, FeaturePlan
from .registry import register_model

Block = Type[BasicBlock] | Type[Bottleneck] | Type[PreActBlock]
STEMS = ("imagenet", "cifar")
BLOCK_KINDS = ("standard", "separable")


class ResNet(ClassifierNet):
    """stem → stages of residual blocks → global average pool → (dropout) → linear."""

    supports_dilation = True  # backbones.FeatureExtractor(output_stride=...) may trade strides for dilation

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        stem_width: int | None = None,
        shortcut: Literal["A", "B"] = "B",
        zero_init_residual: bool = False,
        in_channels: int = 3,
        block_kind: Literal["standard", "separable"] = "standard",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        groups: int = 1,
        width_per_group: int = 64,
        se_reduction: int = 0,
        block_dropout: float = 0.0,
        activation: Literal["relu", "gelu"] = "relu",
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        bn_frozen_scale: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        if block_kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {block_kind!r}; use one of {', '.join(BLOCK_KINDS)}")
        if zero_init_residual and bn_frozen_scale:
            raise ValueError("zero_init_residual sets BN scales to zero and bn_frozen_scale would keep them there; "
                             "choose one")
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
        n = sum(layers)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            stage_rates, rates = rates[:n_blocks], rates[n_blocks:]
            stage, in_planes = self._make_layer(block, in_planes, width, n_blocks, stride, shortcut, separable,
                                                stage_rates, groups=groups, base_width=width_per_group,
                                                se_reduction=se_reduction, dropout=block_dropout)
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
        self.bn_frozen_scale = bn_frozen_scale
        set_norm_act(self, activation, bn_momentum, bn_eps, bn_frozen_scale)

    @staticmethod
    def _make_layer(block: Block, in_planes: int, planes: int, n_blocks: int, stride: int,
                    shortcut: str, separable: bool = False, drop_paths: Sequence[float] = (),
                    **block_args: Any) -> tuple[nn.Sequential, int]:
        blocks = []
        for j in range(n_blocks):
            blocks.append(block(in_planes, planes, stride if j == 0 else 1, shortcut=shortcut, separable=separable,
                                drop_path=drop_paths[j] if drop_paths else 0.0, **block_args))
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
                if isinstance(m, ResidualBlock):
                    nn.init.zeros_(m.last_bn().weight)

    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        if self.final_bn is not None:
            x = self.final_relu(self.final_bn(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(self.head_drop(x))

    def head_extras(self) -> list[nn.Module]:
        return [self.final_bn] if self.final_bn is not None else []

    def fixed_parameters(self) -> list[nn.Parameter]:
        """The BN scales when bn_frozen_scale (fixed, at 1 from scratch, whatever the fine-tuning strategy)."""
        return bn_scales(self) if self.bn_frozen_scale else []

    def feature_plan(self) -> FeaturePlan:
        """Feature levels for backbones: (name, child modules run in order). Level 0 is the stem before
        pooling (timm's "act1"), level i the output of stage i (with the final BN-ReLU of a
        pre-activation net folded into its last stage)."""
        plan = [("stem", ["conv1", "bn1", "relu"]), ("layer1", ["maxpool", "layer1"])]
        plan += [(f"layer{i}", [f"layer{i}"]) for i in range(2, self.num_stages + 1)]
        if self.final_bn is not None:
            plan[-1][1].extend(["final_bn", "final_relu"])
        return plan

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised head for num_classes (as timm's reset_classifier)."""
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)


# One table, one builder. Depths from He et al. 2015 (Table 1 for ImageNet, Sec. 4.2 for CIFAR: 6n+2
# layers in three stages of 16/32/64 channels, option A shortcuts); pre-activation from He et al. 2016;
# ResNeXt from Xie et al. 2017 (ImageNet: torchvision's 32x4d / 32x8d / 64x4d; CIFAR, Sec. 5.3: 29 layers,
# 3 stages of 3 bottlenecks, 64-channel stem, cardinality x 64d); wide ResNets from Zagoruyko & Komodakis
# 2016 (ImageNet: torchvision's bottleneck width x2; CIFAR: pre-activation basic blocks, depth 6n+4, stage
# widths 16k/32k/64k after a 16-channel stem, 1x1 projections where the shape changes).
@dataclass(frozen=True)
class Arch:
    block: Block
    layers: tuple[int, ...]
    family: str                      # "imagenet" (224 px, 7x7 stem) or "cifar" (32 px, 3x3 stem)
    defaults: tuple[tuple[str, Any], ...] = ()


def _cifar(depth: int) -> Arch:
    n = (depth - 2) // 6
    return Arch(BasicBlock, (n, n, n), "cifar", (("widths", (16, 32, 64)), ("stem", "cifar"), ("shortcut", "A")))


def _wrn(depth: int, k: int) -> Arch:
    n = (depth - 4) // 6
    return Arch(PreActBlock, (n, n, n), "cifar", (("widths", (16 * k, 32 * k, 64 * k)), ("stem", "cifar"),
                                                  ("stem_width", 16), ("shortcut", "B")))


def _resnext29(cardinality: int) -> Arch:
    return Arch(Bottleneck, (3, 3, 3), "cifar", (("widths", (64, 128, 256)), ("stem", "cifar"), ("stem_width", 64),
                                                 ("groups", cardinality), ("width_per_group", 64)))


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(BasicBlock, (2, 2, 2, 2), "imagenet"),
    "resnet34": Arch(BasicBlock, (3, 4, 6, 3), "imagenet"),
    "resnet50": Arch(Bottleneck, (3, 4, 6, 3), "imagenet"),
    "resnet101": Arch(Bottleneck, (3, 4, 23, 3), "imagenet"),
    "resnet152": Arch(Bottleneck, (3, 8, 36, 3), "imagenet"),
    **{f"resnet{d}": _cifar(d) for d in (20, 32, 44, 56, 110, 1202)},
    "preact_resnet18": Arch(PreActBlock, (2, 2, 2, 2), "cifar", (("stem", "cifar"),)),
    "resnext50_32x4d": Arch(Bottleneck, (3, 4, 6, 3), "imagenet", (("groups", 32), ("width_per_group", 4))),
    "resnext101_32x8d": Arch(Bottleneck, (3, 4, 23, 3), "imagenet", (("groups", 32), ("width_per_group", 8))),
    "resnext101_64x4d": Arch(Bottleneck, (3, 4, 23, 3), "imagenet", (("groups", 64), ("width_per_group", 4))),
    "wide_resnet50_2": Arch(Bottleneck, (3, 4, 6, 3), "imagenet", (("width_per_group", 128),)),
    "wide_resnet101_2": Arch(Bottleneck, (3, 4, 23, 3), "imagenet", (("width_per_group", 128),)),
    "seresnet50": Arch(Bottleneck, (3, 4, 6, 3), "imagenet", (("se_reduction", 16),)),
    **{f"wrn{d}_{k}": _wrn(d, k) for d, k in ((16, 4), (16, 8), (28, 10), (40, 4))},
    "resnext29_8x64d": _resnext29(8),
    "resnext29_16x64d": _resnext29(16),
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




# Registered factories. User-facing arguments are ResNet's own (see registry.signature_args), with `block`
# for block_kind and, on the paper's CIFAR nets, `option` for the shortcut.
_EXCLUDE = ("block", "layers")
_RENAME = {"block_kind": "block"}
_IMAGENET = dict(family="imagenet", builds=ResNet, exclude=_EXCLUDE, rename=_RENAME, n_stages=4)
_CIFAR = dict(family="cifar", builds=ResNet, exclude=_EXCLUDE, rename=_RENAME, aliases={"option": "shortcut"},
              n_stages=3)


@register_model(**_IMAGENET)
def resnet18(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-18 (He et al. 2015, Table 1): BasicBlock x [2, 2, 2, 2]."""
    return build_resnet("resnet18", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnet34(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlock x [3, 4, 6, 3]."""
    return build_resnet("resnet34", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnet50(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-50: Bottleneck x [3, 4, 6, 3] (stride on the 3x3: torchvision's v1.5)."""
    return build_resnet("resnet50", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnet101(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-101: Bottleneck x [3, 4, 23, 3]."""
    return build_resnet("resnet101", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnet152(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-152: Bottleneck x [3, 8, 36, 3]."""
    return build_resnet("resnet152", num_classes, **kwargs)


@register_model(**_CIFAR)
def resnet20(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2015, Sec. 4.2): 3 stages of 3 BasicBlocks, 16/32/64 channels, option A."""
    return build_resnet("resnet20", num_classes, **kwargs)


@register_model(**_CIFAR)
def resnet32(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-32: 3 stages of 5 BasicBlocks."""
    return build_resnet("resnet32", num_classes, **kwargs)


@register_model(**_CIFAR)
def resnet44(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-44: 3 stages of 7 BasicBlocks."""
    return build_resnet("resnet44", num_classes, **kwargs)


@register_model(**_CIFAR)
def resnet56(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-56: 3 stages of 9 BasicBlocks."""
    return build_resnet("resnet56", num_classes, **kwargs)


@register_model(**_CIFAR)
def resnet110(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-110: 3 stages of 18 BasicBlocks."""
    return build_resnet("resnet110", num_classes, **kwargs)


@register_model(**_CIFAR)
def resnet1202(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-1202: 3 stages of 200 BasicBlocks."""
    return build_resnet("resnet1202", num_classes, **kwargs)


@register_model(family="cifar", builds=ResNet, exclude=_EXCLUDE, rename=_RENAME, n_stages=4)
def preact_resnet18(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """Pre-activation ResNet-18 (He et al. 2016) with the CIFAR stem."""
    return build_resnet("preact_resnet18", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnext50_32x4d(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017): ResNet-50 with 32 groups of 4 channels in the first stage's 3x3s."""
    return build_resnet("resnext50_32x4d", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnext101_32x8d(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d: Bottleneck x [3, 4, 23, 3], 32 groups of 8 channels."""
    return build_resnet("resnext101_32x8d", num_classes, **kwargs)


@register_model(**_IMAGENET)
def resnext101_64x4d(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d: Bottleneck x [3, 4, 23, 3], 64 groups of 4 channels."""
    return build_resnet("resnext101_64x4d", num_classes, **kwargs)


@register_model(**_IMAGENET)
def wide_resnet50_2(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 (torchvision): ResNet-50 with bottleneck 3x3s twice as wide."""
    return build_resnet("wide_resnet50_2", num_classes, **kwargs)


@register_model(**_IMAGENET)
def wide_resnet101_2(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """Wide ResNet-101-2 (torchvision): ResNet-101 with bottleneck 3x3s twice as wide."""
    return build_resnet("wide_resnet101_2", num_classes, **kwargs)


@register_model(**_IMAGENET)
def seresnet50(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """SE-ResNet-50 (Hu et al. 2018): ResNet-50 with squeeze-and-excitation, reduction 16, in every block."""
    return build_resnet("seresnet50", num_classes, **kwargs)


_WRN = dict(family="cifar", builds=ResNet, exclude=_EXCLUDE, rename=_RENAME, n_stages=3)


@register_model(**_WRN)
def wrn16_4(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """WRN-16-4 (Zagoruyko & Komodakis 2016): 2 pre-activation blocks per stage, widths 64/128/256."""
    return build_resnet("wrn16_4", num_classes, **kwargs)


@register_model(**_WRN)
def wrn16_8(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """WRN-16-8: 2 pre-activation blocks per stage, widths 128/256/512."""
    return build_resnet("wrn16_8", num_classes, **kwargs)


@register_model(**_WRN)
def wrn28_10(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """WRN-28-10: 4 pre-activation blocks per stage, widths 160/320/640 (the paper's CIFAR headline net)."""
    return build_resnet("wrn28_10", num_classes, **kwargs)


@register_model(**_WRN)
def wrn40_4(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """WRN-40-4: 6 pre-activation blocks per stage, widths 64/128/256."""
    return build_resnet("wrn40_4", num_classes, **kwargs)


@register_model(**_WRN)
def resnext29_8x64d(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """ResNeXt-29 8x64d (Xie et al. 2017, CIFAR): 3 stages of 3 bottlenecks, 8 groups of 64 channels at first."""
    return build_resnet("resnext29_8x64d", num_classes, **kwargs)


@register_model(**_WRN)
def resnext29_16x64d(num_classes: int = 10, **kwargs: Any) -> ResNet:
    """ResNeXt-29 16x64d: 3 stages of 3 bottlenecks, 16 groups of 64 channels at first."""
    return build_resnet("resnext29_16x64d", num_classes, **kwargs)
