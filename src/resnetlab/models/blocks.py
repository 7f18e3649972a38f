"""Residual blocks: BasicBlock, Bottleneck (torchvision "v1.5"), PreActBlock, and the two shortcuts.

Attribute names (conv1, bn1, ..., downsample) follow torchvision so that a torchvision
state_dict loads into our ResNets with strict=True.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def set_norm_act(model: nn.Module, activation: str = "relu", bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 bn_frozen_scale: bool = False) -> None:
    """Every BatchNorm and activation of `model` as airbench94_muon sets them, when asked (Jordan 2024: GELU,
    BN statistics momentum 0.4 in torch's convention (its 0.6 is the old statistics' share), eps 1e-12,
    scales frozen at 1 so the BN biases alone shift each channel). activation="gelu" replaces every ReLU
    module, keeping its attribute name (a block's `relu` then holds a GELU: torchvision's names stay)."""
    if activation not in ("relu", "gelu"):
        raise ValueError(f"unknown activation {activation!r}; use relu or gelu")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = bn_momentum, bn_eps
            m.weight.requires_grad_(not bn_frozen_scale)
        if activation == "gelu":
            for name, child in m.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(m, name, nn.GELU())


def bn_scales(model: nn.Module) -> list[nn.Parameter]:
    """Every BatchNorm scale of `model` (what bn_frozen_scale fixes: a ClassifierNet's fixed_parameters)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class SeparableConv(nn.Sequential):
    """A 3x3 convolution factored as depthwise 3x3 (one filter per channel) + BN + pointwise 1x1 (Howard et
    al. 2017, MobileNets; Chollet 2017, Xception: no non-linearity between the two). For C→C channels it
    has 9C + C² weights instead of 9C²: about 8-9x fewer at the widths ResNets use."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(in_planes, in_planes, 3, stride=stride, padding=1, groups=in_planes, bias=False),
                         nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, out_planes, 1, bias=False))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, each sample's residual branch is dropped with
    probability p and kept ones are scaled by 1/(1-p), so the expected output is unchanged; identity in
    eval mode. Applied per sample, as timm's DropPath."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def spatial_conv(in_planes: int, out_planes: int, stride: int = 1, separable: bool = False) -> nn.Module:
    """The 3x3 convolution of a block: standard, or depthwise-separable."""
    return SeparableConv(in_planes, out_planes, stride) if separable else conv3x3(in_planes, out_planes, stride)


class ZeroPadShortcut(nn.Module):
    """He et al. 2015 option A: identity with stride-2 subsampling and zero-padded extra channels.

    Parameter-free, which is why the paper's CIFAR ResNet-20 has 0.27 M parameters.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("option A shortcut cannot reduce channels")
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            # Split the padding on both sides as in the paper's reference (planes//4 each side).
            before = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, before, self.extra - before))
        return x


def make_shortcut(in_planes: int, out_planes: int, stride: int, option: str,
                  with_bn: bool = True) -> nn.Module | None:
    """Return the shortcut module for a shape change, or None when identity suffices."""
    if stride == 1 and in_planes == out_planes:
        return None
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    if option == "B":
        if not with_bn:  # pre-activation blocks project the already-normalised input
            return nn.Sequential(conv1x1(in_planes, out_planes, stride))
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    raise ValueError(f"unknown shortcut option {option!r}; use 'A' or 'B'")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool → 1x1 conv to C/reduction → ReLU → 1x1 conv
    back to C → sigmoid, a per-channel scale of the residual branch (timm's SEModule names: fc1, fc2)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()


def _se(channels: int, reduction: int) -> nn.Module:
    return SqueezeExcite(channels, reduction) if reduction else nn.Identity()


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p else nn.Identity()


class ResidualBlock(nn.Module):
    """A residual unit: `expansion` (output channels per `planes`) and `last_bn()`, the BatchNorm that ends
    its residual branch (zero_init_residual sets its scale to zero, so the block starts as identity).
    Blocks take torchvision's `groups` and `base_width`: the 3x3 convs of a Bottleneck have
    planes * base_width / 64 * groups channels in `groups` groups (ResNeXt; wide ResNets: base_width 128);
    `se_reduction` > 0 adds squeeze-and-excitation at the end of the branch, `dropout` a dropout between its
    convolutions (wide ResNets: Zagoruyko & Komodakis 2016)."""

    expansion: int = 1

    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError


def _plain_only(kind: str, groups: int, base_width: int) -> None:
    if groups != 1 or base_width != 64:
        raise ValueError(f"{kind} supports only groups=1 and base_width=64 (use a Bottleneck net for "
                         f"grouped or wider 3x3 convs)")


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (He et al. 2015, Fig. 2 left); separable=True factors each one (SeparableConv)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B",
                 separable: bool = False, drop_path: float = 0.0, groups: int = 1, base_width: int = 64,
                 se_reduction: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        _plain_only("BasicBlock", groups, base_width)
        self.conv1 = spatial_conv(in_planes, planes, stride, separable)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = _dropout(dropout)
        self.conv2 = spatial_conv(planes, planes, 1, separable)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = _se(planes, se_reduction)
        self.downsample = make_shortcut(in_planes, planes * self.expansion, stride, shortcut)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.dropout(self.relu(self.bn1(self.conv1(x))))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(self.drop_path(out) + identity)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand; stride on the 3x3 conv (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B",
                 separable: bool = False, drop_path: float = 0.0, groups: int = 1, base_width: int = 64,
                 se_reduction: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < groups:
            raise ValueError(f"{planes} planes at base_width {base_width} leave no channels per group ({groups} "
                             f"groups); use wider stages")
        if separable and groups != 1:
            raise ValueError("separable 3x3 convs are depthwise already; use groups=1 with block=separable")
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = (spatial_conv(width, width, stride, separable) if groups == 1 else
                      nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False))
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = _dropout(dropout)
        self.se = _se(planes * self.expansion, se_reduction)
        self.downsample = make_shortcut(in_planes, planes * self.expansion, stride, shortcut)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.dropout(self.relu(self.bn2(self.conv2(out))))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(self.drop_path(out) + identity)


class PreActBlock(ResidualBlock):
    """BN-ReLU-conv twice with a clean identity path (He et al. 2016, "Identity Mappings")."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B",
                 separable: bool = False, drop_path: float = 0.0, groups: int = 1, base_width: int = 64,
                 se_reduction: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        _plain_only("PreActBlock", groups, base_width)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = spatial_conv(in_planes, planes, stride, separable)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = _dropout(dropout)
        self.conv2 = spatial_conv(planes, planes, 1, separable)
        self.se = _se(planes, se_reduction)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = make_shortcut(in_planes, planes, stride, shortcut, with_bn=False)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the paper's full pre-activation unit.
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.se(self.conv2(self.dropout(self.relu(self.bn2(out)))))
        return self.drop_path(out) + identity
