"""The ResNet family: torchvision-compatible ImageNet ResNets and the CIFAR ResNets of He et al. 2015.

One `ResNet` class serves both: the stem ("imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv,
no pool), the stage widths and the block type are arguments. Parameter names equal torchvision's so
ImageNet weights load with strict=True.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, Type

import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, PreActBlock, ResidualBlock, bn_scales, set_norm_act
from .contract import ClassifierNet, FeaturePlan
from .registry import register_model

Block = Type[BasicBlock] | Type[Bottleneck] | Type[PreActBlock]
STEMS = ("imagenet", "cifar")
BLOCK_KINDS = ("standard", "separable")


class ResNet(ClassifierNet):
    """stem → stages of residual blocks → global average pool → (dropout) → linear.

    Args:
        block: the residual block class (BasicBlock, Bottleneck or PreActBlock); a row of ROWS chooses it.
        layers: blocks per stage; a row of ROWS chooses them.
        num_classes: outputs of the classifier.
        widths: channels of each stage.
        stem: imagenet (7x7/2 conv + max-pool) or cifar (3x3/1 conv).
        stem_width: channels of the stem conv (default: first stage width).
        shortcut: A: zero-padded identity, B: 1x1 projection.
        zero_init_residual: start every residual branch at zero (Goyal et al. 2017).
        in_channels: input channels.
        block_kind: separable: every 3x3 conv depthwise + pointwise.
        drop_rate: dropout before the classifier (0: off).
        drop_path_rate: stochastic depth of the last residual block, rising linearly from 0 over the blocks
            (0: off).
        groups: groups of the 3x3 convs of Bottleneck blocks (ResNeXt's cardinality).
        width_per_group: channels per group of the Bottleneck 3x3 convs at the first stage (64: plain ResNet;
            128: wide ResNet).
        se_reduction: squeeze-and-excitation in every residual block with this channel reduction (Hu et al.
            2018: 16; 0: off).
        block_dropout: dropout between the convolutions of every residual block (wide ResNets: 0.3; 0: off).
        activation: relu or gelu, everywhere in the net (airbench94_muon: gelu).
        bn_momentum: weight of each batch in the BN running statistics (torch's convention; airbench94_muon:
            0.4).
        bn_eps: BN epsilon (airbench94_muon: 1e-12).
        bn_frozen_scale: BN scales fixed at 1, only the BN biases train (airbench94_muon).
    """

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
        self._make_stem(in_channels, stem_width)
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

    def _make_stem(self, in_channels: int, width: int) -> None:
        """conv1 → bn1 → relu → maxpool (torchvision's names): a 7x7/2 conv and a 3x3/2 max-pool (imagenet) or a
        3x3/1 conv (cifar). Pre-activation nets normalise inside each block, so their stem is a bare conv."""
        if self.stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(width)
        self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if self.stem == "imagenet" else nn.Identity()

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


# One row per model, one builder. Depths from He et al. 2015 (Table 1 for ImageNet, Sec. 4.2 for CIFAR: 6n+2
# layers in three stages of 16/32/64 channels, option A shortcuts); pre-activation from He et al. 2016;
# ResNeXt from Xie et al. 2017 (ImageNet: torchvision's 32x4d / 32x8d / 64x4d; CIFAR, Sec. 5.3: 29 layers,
# 3 stages of 3 bottlenecks, 64-channel stem, cardinality x 64d); wide ResNets from Zagoruyko & Komodakis
# 2016 (ImageNet: torchvision's bottleneck width x2; CIFAR: pre-activation basic blocks, depth 6n+4, stage
# widths 16k/32k/64k after a 16-channel stem, 1x1 projections where the shape changes).
@dataclass(frozen=True)
class Arch:
    """A model as data: its registered factory, its listing and its zoo row follow from this row."""
    name: str
    block: Block
    layers: tuple[int, ...]
    family: str                      # "imagenet" (224 px, 7x7 stem) or "cifar" (32 px, 3x3 stem)
    help: str                        # one line: what it is, with its source
    defaults: tuple[tuple[str, Any], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # (another name, the argument it names): the paper's `option`

    @property
    def n_stages(self) -> int:
        return len(self.layers)


def _cifar(depth: int) -> Arch:
    n = (depth - 2) // 6
    return Arch(f"resnet{depth}", BasicBlock, (n, n, n), "cifar",
                f"CIFAR ResNet-{depth} (He et al. 2015, Sec. 4.2): 3 stages of {n} BasicBlocks, 16/32/64 channels, "
                f"option A", (("widths", (16, 32, 64)), ("stem", "cifar"), ("shortcut", "A")),
                (("option", "shortcut"),))


def _wrn(depth: int, k: int) -> Arch:
    n = (depth - 4) // 6
    return Arch(f"wrn{depth}_{k}", PreActBlock, (n, n, n), "cifar",
                f"WRN-{depth}-{k} (Zagoruyko & Komodakis 2016): {n} pre-activation blocks per stage, widths "
                f"{16 * k}/{32 * k}/{64 * k}", (("widths", (16 * k, 32 * k, 64 * k)), ("stem", "cifar"),
                                                ("stem_width", 16), ("shortcut", "B")))


def _resnext29(cardinality: int) -> Arch:
    return Arch(f"resnext29_{cardinality}x64d", Bottleneck, (3, 3, 3), "cifar",
                f"ResNeXt-29 {cardinality}x64d (Xie et al. 2017, CIFAR): 3 stages of 3 bottlenecks, {cardinality} "
                f"groups of 64 channels at first", (("widths", (64, 128, 256)), ("stem", "cifar"), ("stem_width", 64),
                                                    ("groups", cardinality), ("width_per_group", 64)))


ROWS: tuple[Arch, ...] = (
    Arch("resnet18", BasicBlock, (2, 2, 2, 2), "imagenet", "ResNet-18 (He et al. 2015, Table 1)"),
    Arch("resnet34", BasicBlock, (3, 4, 6, 3), "imagenet", "ResNet-34 (He et al. 2015, Table 1)"),
    Arch("resnet50", Bottleneck, (3, 4, 6, 3), "imagenet", "ResNet-50 (stride on the 3x3: torchvision's v1.5)"),
    Arch("resnet101", Bottleneck, (3, 4, 23, 3), "imagenet", "ResNet-101 (He et al. 2015, Table 1)"),
    Arch("resnet152", Bottleneck, (3, 8, 36, 3), "imagenet", "ResNet-152 (He et al. 2015, Table 1)"),
    *(_cifar(d) for d in (20, 32, 44, 56, 110, 1202)),
    Arch("preact_resnet18", PreActBlock, (2, 2, 2, 2), "cifar", "Pre-activation ResNet-18 (He et al. 2016) with the "
         "CIFAR stem", (("stem", "cifar"),)),
    Arch("resnext50_32x4d", Bottleneck, (3, 4, 6, 3), "imagenet", "ResNeXt-50 32x4d (Xie et al. 2017): 32 groups of "
         "4 channels in the first stage's 3x3s", (("groups", 32), ("width_per_group", 4))),
    Arch("resnext101_32x8d", Bottleneck, (3, 4, 23, 3), "imagenet", "ResNeXt-101 32x8d: 32 groups of 8 channels",
         (("groups", 32), ("width_per_group", 8))),
    Arch("resnext101_64x4d", Bottleneck, (3, 4, 23, 3), "imagenet", "ResNeXt-101 64x4d: 64 groups of 4 channels",
         (("groups", 64), ("width_per_group", 4))),
    Arch("wide_resnet50_2", Bottleneck, (3, 4, 6, 3), "imagenet", "Wide ResNet-50-2 (torchvision): bottleneck 3x3s "
         "twice as wide", (("width_per_group", 128),)),
    Arch("wide_resnet101_2", Bottleneck, (3, 4, 23, 3), "imagenet", "Wide ResNet-101-2 (torchvision): bottleneck "
         "3x3s twice as wide", (("width_per_group", 128),)),
    Arch("seresnet50", Bottleneck, (3, 4, 6, 3), "imagenet", "SE-ResNet-50 (Hu et al. 2018): squeeze-and-excitation, "
         "reduction 16, in every block", (("se_reduction", 16),)),
    *(_wrn(d, k) for d, k in ((16, 4), (16, 8), (28, 10), (40, 4))),
    _resnext29(8),
    _resnext29(16),
)
ARCHS: dict[str, Arch] = {}


def build_resnet(name: str, num_classes: int | None = None, **kwargs: Any) -> ResNet:
    """The ResNet called `name` in ARCHS; kwargs override the row's defaults (e.g. stem="cifar").
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


def register_arch(arch: Arch) -> Callable[..., ResNet]:
    """Register a row: a factory `name(num_classes=..., **kwargs)` whose user-facing arguments are ResNet's own
    (see registry.signature_args), with `block` for block_kind and, on the paper's CIFAR nets, `option` for the
    shortcut. Returns the factory (the package exports it under the row's name)."""
    def factory(num_classes: int = 1000 if arch.family == "imagenet" else 10, **kwargs: Any) -> ResNet:
        return build_resnet(arch.name, num_classes, **kwargs)
    factory.__name__ = factory.__qualname__ = arch.name
    factory.__doc__ = f"{arch.help}: {arch.block.__name__} x {list(arch.layers)}."
    ARCHS[arch.name] = arch
    return register_model(family=arch.family, builds=ResNet, exclude=("block", "layers"),
                          rename={"block_kind": "block"}, aliases=dict(arch.aliases), n_stages=arch.n_stages)(factory)


FACTORIES: dict[str, Callable[..., ResNet]] = {arch.name: register_arch(arch) for arch in ROWS}
