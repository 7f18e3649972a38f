"""Our ResNets as backbones of detectors and segmenters: stage feature maps, as timm's `features_only`.

`FeatureExtractor(model, out_indices)` keeps the model's own modules under their own names (so the
same weights load: a resnetlab checkpoint or torchvision's) and returns the feature map of each asked
level: 0 = the stem before pooling, i = stage i. `feature_info` gives channels and reduction (input
pixels per feature pixel) of each. `output_stride` turns the last strides into dilation (DeepLab's
"atrous" backbone; torchvision's `replace_stride_with_dilation`), and `set_trainable` freezes the
early stages and/or every BatchNorm, with the fine-tuning freeze policy's code.

For torchvision: `FPNBackbone` puts a feature pyramid on top (for `FasterRCNN`, which reads
`.out_channels`), `NamedFeatures` returns a dict with the keys `FCN` / `DeepLabV3` read ("out", "aux").
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UserError
from .blocks import ZeroPadShortcut
from .contract import ClassifierNet, level_shapes, run_plan
from .freeze import freeze_except


class FeatureInfo(list):
    """One dict per returned level: index, module, num_chs, reduction (timm's feature_info)."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def _dilate(model: nn.Module, output_stride: int) -> None:
    """Replace the strides that would take the net past output_stride by dilation, in place.

    As torchvision's ResNet with replace_stride_with_dilation: in a converted stage, the first block's
    strided 3x3 keeps the previous dilation (with stride 1) and every later 3x3 gets the new, doubled
    one; the shortcut stops subsampling."""
    plan = model.feature_plan()
    red = [r for _, r in level_shapes(model, plan)]
    if output_stride not in {red[1] * 2 ** k for k in range(8)}:
        raise UserError(f"output_stride must be a power of two from {red[1]} (the first stage's reduction) up, "
                        f"got {output_stride!r}")
    dilation = 1
    for level in range(2, len(plan)):
        if red[level] <= output_stride:
            continue
        stage = getattr(model, plan[level][1][0])
        first = next(iter(stage.children()), stage)
        previous, dilation = dilation, dilation * 2
        for m in stage.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                in_first = any(m is x for x in first.modules())
                d = previous if (in_first and m.stride == (2, 2)) else dilation
                m.stride, m.dilation, m.padding = (1, 1), (d, d), (d, d)
            elif isinstance(m, nn.Conv2d) and m.stride == (2, 2):  # 1x1 projection shortcut
                m.stride = (1, 1)
            elif isinstance(m, ZeroPadShortcut):
                m.stride = 1


class FeatureExtractor(nn.Module):
    """Stage feature maps of any model of the contract (models.contract.ClassifierNet: its feature_plan)."""

    def __init__(self, model: ClassifierNet, out_indices: Sequence[int] | None = None,
                 output_stride: int | None = None) -> None:
        super().__init__()
        self._bn_policy = None
        if not isinstance(model, ClassifierNet):
            raise UserError(f"{type(model).__name__} is not a resnetlab model (models.contract.ClassifierNet)")
        plan = model.feature_plan()
        levels = len(plan)
        if out_indices is None:
            out_indices = tuple(range(1, levels))
        out_indices = tuple(out_indices)
        if not out_indices or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < levels
                                      for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise UserError(f"out_indices must be increasing, distinct levels in 0..{levels - 1} "
                            f"({', '.join(f'{i}: {n}' for i, (n, _) in enumerate(plan))}); got {out_indices!r}")
        if output_stride is not None:
            if not model.supports_dilation:
                raise UserError(f"output_stride (dilation) is not available for {type(model).__name__}")
            _dilate(model, output_stride)
        self.plan = plan[: max(out_indices) + 1]
        for _, names in self.plan:
            for n in names:
                mod = getattr(model, n, None)
                if mod is not None:
                    self.add_module(n, mod)
        self.out_indices = out_indices
        self.feature_info = FeatureInfo(self._probe())

    def _probe(self) -> list[dict[str, Any]]:
        shapes = level_shapes(self, self.plan)
        return [{"index": i, "module": self.plan[i][0], "num_chs": shapes[i][0], "reduction": shapes[i][1]}
                for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = run_plan(self, self.plan, x)
        return [outs[i] for i in self.out_indices]

    def stages(self) -> list[nn.Module]:
        """The modules of levels 1.. (what `trainable_stages` counts from the end)."""
        return [nn.ModuleList([getattr(self, n) for n in names if getattr(self, n, None) is not None])
                for _, names in self.plan[1:]]

    def set_trainable(self, trainable_stages: int | None = None, frozen_bn: bool = False) -> "FeatureExtractor":
        """Train only the last `trainable_stages` levels (None: all; one more than the stages: the stem
        too), and with frozen_bn every BatchNorm keeps its statistics and affine parameters (detection
        batches are small). The fine-tuning freeze policy does the work; BN modes survive .train()."""
        stages = self.stages()
        if trainable_stages is None:
            trainable: list[nn.Module] = [self]
        elif isinstance(trainable_stages, int) and 0 <= trainable_stages <= len(stages) + 1:
            trainable = list(stages[len(stages) - min(trainable_stages, len(stages)):])
            if trainable_stages == len(stages) + 1:
                trainable = [self]
        else:
            raise UserError(f"trainable_stages must be between 0 and {len(stages) + 1}, got {trainable_stages!r}")
        self._bn_policy = freeze_except(self, trainable, freeze_bn_stats=frozen_bn, freeze_bn_affine=frozen_bn)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode)
        if mode and self._bn_policy is not None:
            self._bn_policy(self)
        return self


class FPNBackbone(nn.Module):
    """FeatureExtractor + torchvision's FeaturePyramidNetwork (+ an extra max-pooled level): the
    backbone torchvision's FasterRCNN / MaskRCNN / RetinaNet expect (dict of maps, `.out_channels`)."""

    def __init__(self, body: FeatureExtractor, out_channels: int = 256, extra_pool: bool = True) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class NamedFeatures(nn.Module):
    """FeatureExtractor whose maps come back as a dict under the given names, e.g. ("aux", "out") for
    torchvision's FCN and DeepLabV3 (which read features["out"], and features["aux"] when they have an
    auxiliary head)."""

    def __init__(self, body: FeatureExtractor, names: Sequence[str]) -> None:
        super().__init__()
        if len(names) != len(body.out_indices):
            raise UserError(f"{len(names)} names for {len(body.out_indices)} feature levels")
        self.body, self.names = body, list(names)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(zip(self.names, self.body(x)))
