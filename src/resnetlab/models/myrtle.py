"""A ResNet-9-style network (Myrtle.ai's DAWNBench design) made of resnetlab's own BasicBlocks.

Why it exists: on a CPU, the deep-and-thin CIFAR ResNets spend their time in many small convolutions;
this net has few, wide layers at low resolution and reaches high CIFAR-10 accuracy in a handful of epochs
(the default recipe's figures: docs/results/training.md), which is what short CPU recipes need. Widths are configurable so
recipes can trade accuracy for time.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from .blocks import BasicBlock, bn_scales, set_norm_act, spatial_conv
from .contract import ClassifierNet, FeaturePlan
from .registry import register_model


def conv_bn(c_in: int, c_out: int, pool: bool = False, separable: bool = False,
            pool_first: bool = False) -> nn.Sequential:
    """conv → BN → ReLU (→ max-pool). pool_first: conv → max-pool → BN → ReLU, as airbench orders it
    (Jordan 2024): BN and ReLU then work on a quarter of the pixels. Measured on a 2-core Zen 4 the
    full-resolution BN/ReLU/pool of the default net took a third of its training step."""
    conv = spatial_conv(c_in, c_out, 1, separable)
    if pool and pool_first:
        return nn.Sequential(conv, nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ResNet9(ClassifierNet):
    """prep conv → [conv+pool, BasicBlock] → conv+pool → [conv+pool, BasicBlock] → max-pool → linear.

    Args:
        num_classes: outputs of the classifier.
        widths: channels of each stage.
        in_channels: input channels.
        head_scale: logit scale (Myrtle: 0.125).
        whiten: fixed 3x3 patch-whitening first layer.
        whiten_eps: whitening regulariser: filters scale by 1/sqrt(eigenvalue + eps); larger amplifies fine
            detail (and JPEG noise) less.
        block: separable: every 3x3 conv depthwise + pointwise.
        drop_rate: dropout before the classifier (0: off).
        drop_path_rate: stochastic depth of the last residual block, rising linearly from 0 over the blocks
            (0: off).
        pool_first: conv → max-pool → BN → ReLU in the pooling layers (airbench's order; cheaper on CPUs).
        dirac: the first c_in filters of each conv start as the identity (airbench).
        se_reduction: squeeze-and-excitation in every residual block with this channel reduction (Hu et al.
            2018: 16; 0: off).
        activation: relu or gelu, everywhere in the net (airbench94_muon: gelu).
        bn_momentum: weight of each batch in the BN running statistics (torch's convention; airbench94_muon:
            0.4).
        bn_eps: BN epsilon (airbench94_muon: 1e-12).
        bn_frozen_scale: BN scales fixed at 1, only the BN biases train (airbench94_muon).
        whiten_style: pca: 3x3 patches (27 filters), then a 1x1 conv + BN + activation to widths[0]; airbench:
            2x2 patches, each filter and its negative (widths[0] = 24), a trained bias, the activation
            (airbench94_muon).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512),
                 in_channels: int = 3, head_scale: float = 0.125, whiten: bool = False,
                 whiten_eps: float = 1e-2, block: Literal["standard", "separable"] = "standard",
                 drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, pool_first: bool = False, dirac: bool = False,
                 se_reduction: int = 0, activation: Literal["relu", "gelu"] = "relu", bn_momentum: float = 0.1,
                 bn_eps: float = 1e-5, bn_frozen_scale: bool = False,
                 whiten_style: Literal["pca", "airbench"] = "pca") -> None:
        super().__init__()
        if block not in ("standard", "separable"):
            raise ValueError(f"unknown block kind {block!r}; use standard or separable")
        sep = block == "separable"  # every 3x3 conv after the input layer depthwise-separable
        w0, w1, w2, w3 = widths
        self.whiten_eps = whiten_eps
        self.whiten_style = whiten_style
        self._make_stem(in_channels, w0, whiten)
        # two residual blocks: stochastic depth 0 on the first, drop_path_rate on the last (linear in depth)
        pf = pool_first
        se = se_reduction
        self.layer1 = nn.Sequential(conv_bn(w0, w1, True, sep, pf),
                                    BasicBlock(w1, w1, separable=sep, drop_path=0.0, se_reduction=se))
        self.layer2 = conv_bn(w1, w2, True, sep, pf)
        self.layer3 = nn.Sequential(conv_bn(w2, w3, True, sep, pf),
                                    BasicBlock(w3, w3, separable=sep, drop_path=drop_path_rate, se_reduction=se))
        self.head_drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = w3
        self.num_stages = 3
        self.fc = nn.Linear(w3, num_classes, bias=False)
        # Scaling the logits keeps the softmax from saturating early (the Myrtle recipe uses 0.125).
        self.head_scale = head_scale
        self._init_weights(in_channels, dirac)
        self.bn_frozen_scale = bn_frozen_scale
        set_norm_act(self, activation, bn_momentum, bn_eps, bn_frozen_scale)

    def _make_stem(self, in_channels: int, w0: int, whiten: bool) -> None:
        """`whiten` and `prep`. Optional fixed patch-whitening conv (PCA of input patches, Page 2018 / airbench):
        decorrelated inputs make the first epochs far more productive; filled by init_whitening() from training
        data. pca: 3x3 patches, all 27 components, then a 1x1 conv + BN + ReLU to w0 channels. airbench
        (airbench94_muon, Jordan 2024): 2x2 patches without padding, each component and its negative (24 channels
        = w0), a trained bias and the activation straight after; nothing else at full resolution."""
        self.whiten = None
        if self.whiten_style == "airbench" and not whiten:
            raise ValueError("whiten_style airbench is a whitening stem; set whiten to true as well")
        if self.whiten_style == "airbench":
            if w0 != in_channels * 8:
                raise ValueError(f"whiten_style airbench makes {in_channels * 8} channels (2x2 patches x "
                                 f"{in_channels} channels x 2 signs); set widths[0] to {in_channels * 8}, not {w0}")
            self.whiten = nn.Conv2d(in_channels, w0, 2, padding=0, bias=True)
            self.whiten.weight.requires_grad_(False)
            self.prep = nn.Sequential(nn.ReLU(inplace=True))
        elif whiten:
            self.whiten = nn.Conv2d(in_channels, in_channels * 9, 3, padding=1, bias=False)
            self.whiten.weight.requires_grad_(False)
            self.prep = nn.Sequential(nn.Conv2d(in_channels * 9, w0, 1, bias=False), nn.BatchNorm2d(w0),
                                      nn.ReLU(inplace=True))
        else:
            self.prep = conv_bn(in_channels, w0)

    def _init_weights(self, in_channels: int, dirac: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.whiten:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                # dirac: the first c_in filters start as the identity (airbench, Jordan 2024), so every
                # layer initially passes its input through next to its random features
                if dirac and m.groups == 1 and m.out_channels >= m.in_channels:
                    nn.init.dirac_(m.weight[: m.in_channels])
        if self.whiten is not None:
            nn.init.dirac_(self.whiten.weight[: in_channels])  # until init_whitening: pass-through
            nn.init.zeros_(self.whiten.weight[in_channels:])
            if self.whiten.bias is not None:
                nn.init.zeros_(self.whiten.bias)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float | None = None) -> None:
        """Set the whitening filters from normalised training images x (N, C, H, W): the eigenvectors of
        the patch covariance, scaled by 1/sqrt(eigenvalue + eps) (eps: the model's whiten_eps); with
        whiten_style airbench each filter and its negative."""
        eps = self.whiten_eps if eps is None else eps
        if self.whiten is None:
            return
        k, c = self.whiten.kernel_size[0], x.shape[1]
        patches = torch.nn.functional.unfold(x.float(), k).transpose(1, 2).reshape(-1, c * k * k)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        evals, evecs = torch.linalg.eigh(cov.double())
        filters = (evecs.T / (evals + eps).sqrt()[:, None]).float().view(-1, c, k, k).flip(0)
        if self.whiten_style == "airbench":
            filters = torch.cat([filters, -filters])
        self.whiten.weight.copy_(filters)

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    @torch.no_grad()
    def fold_for_inference(self) -> int:
        """The fixed whitening conv and the prep layer's 1x1 conv after it are two linear maps with nothing
        between them: one 3x3 conv (in_channels → w0) computes both. Quantizers then see no 27-channel
        intermediate tensor (on the default net it cost the int8 copy the most agreement, docs/results/deploy.md)."""
        if self.whiten is None or self.whiten_style == "airbench":  # bias and activation between: nothing to fold
            return 0
        point = self.prep[0]
        merged = nn.Conv2d(self.whiten.in_channels, point.out_channels, 3, padding=1, bias=False)
        merged.weight.copy_(torch.einsum("oj,jchw->ochw", point.weight[:, :, 0, 0], self.whiten.weight))
        merged.to(point.weight.device, point.weight.dtype)
        self.prep[0], self.whiten = merged, None
        return 1

    @property
    def init_images(self) -> int:
        return 5000 if self.whiten is not None else 0

    def init_from_data(self, images: torch.Tensor) -> None:
        self.init_whitening(images)

    def feature_plan(self) -> FeaturePlan:
        """Feature levels for backbones: 0 = the prep layer's output (full resolution), 1-3 = the stages."""
        return [("stem", ["whiten", "prep"]), ("layer1", ["layer1"]), ("layer2", ["layer2"]), ("layer3", ["layer3"])]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.whiten is not None:
            x = self.whiten(x)
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.fc(self.head_drop(x)) * self.head_scale

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes, bias=False).to(self.fc.weight.device)

    def fixed_parameters(self) -> list[nn.Parameter]:
        """Parameters that never train, whatever the fine-tuning strategy: the whitening filters (not the
        airbench stem's bias), and the BN scales when bn_frozen_scale."""
        fixed = [self.whiten.weight] if self.whiten is not None else []
        return fixed + (bn_scales(self) if self.bn_frozen_scale else [])


@register_model(family="cifar", builds=ResNet9, n_stages=4)
def resnet9(num_classes: int = 10, **kw) -> ResNet9:
    """Myrtle.ai's ResNet-9 layout (Page 2018): widths 64/128/256/512."""
    return ResNet9(num_classes, **kw)


@register_model(family="cifar", builds=ResNet9, n_stages=4)
def resnet9_small(num_classes: int = 10, **kw) -> ResNet9:
    """Half-width ResNet-9 (32/64/128/256): ~4x fewer MACs, for 2-core CPU budgets."""
    kw.setdefault("widths", (32, 64, 128, 256))
    return ResNet9(num_classes, **kw)
