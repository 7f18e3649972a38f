"""The model contract: what every resnetlab family implements, and what the rest of the package relies on.

A family subclasses `ClassifierNet` and provides:
- `stages()`: the residual stages, in order (fine-tuning freezes and scales learning rates by them);
- `feature_plan()`: feature levels as (name, child module names run in order); level 0 is the stem,
  level i the output of stage i (backbones run it; `feature_info` describes it);
- `forward_features(x)`: the last spatial feature map (N, C, H, W), before global pooling;
- `forward_head(x, pre_logits=False)`: pooling, dropout and the classifier (pre_logits: the pooled features);
- `get_classifier()` / `reset_classifier(num_classes)`: the head, as timm names them.
Optional hooks, with defaults here: `supports_dilation` (backbones may trade strides for dilation),
`fixed_parameters()` (never trained, whatever the strategy), `head_extras()` (modules that train with the
head in a partial fine-tune, e.g. a pre-activation net's final BN), `init_from_data(images)` (data-dependent
initialisation before training, e.g. whitening filters, from `init_images` training images; 0: not called) and
`fold_for_inference()` (merge, in place, layers whose composition is one layer, for export; the answers stay the
same, the trained state dict no longer loads).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

FeaturePlan = list[tuple[str, list[str]]]


class ClassifierNet(nn.Module):
    """Base class of every model family (see the module docstring for the contract)."""

    supports_dilation: ClassVar[bool] = False
    num_features: int  # channels of forward_features' output (the classifier's input)

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def feature_plan(self) -> FeaturePlan:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    # optional hooks ---------------------------------------------------------------------------
    def fixed_parameters(self) -> list[nn.Parameter]:
        return []

    def head_extras(self) -> list[nn.Module]:
        return []

    @property
    def init_images(self) -> int:
        """How many training images init_from_data wants (0: the model has no data-dependent initialisation)."""
        return 0

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation from normalised training images (N, C, H, W); default: none."""

    def fold_for_inference(self) -> int:
        """Merge consecutive linear layers into one, in place, without changing the outputs; how many were
        merged. Default: none."""
        return 0

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One dict per feature level (index, module, num_chs, reduction), as timm's feature_info."""
        plan = self.feature_plan()
        return [{"index": i, "module": name, "num_chs": c, "reduction": r}
                for i, ((name, _), (c, r)) in enumerate(zip(plan, level_shapes(self, plan)))]


def run_plan(owner: nn.Module, plan: FeaturePlan, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every level of a feature plan, running owner's modules by name (absent ones skipped)."""
    outs = []
    for _, names in plan:
        for n in names:
            mod = getattr(owner, n, None)
            if mod is not None:
                x = mod(x)
        outs.append(x)
    return outs


def in_channels(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


@torch.no_grad()
def level_shapes(model: nn.Module, plan: FeaturePlan, size: int = 64) -> list[tuple[int, int]]:
    """(channels, reduction) of every level, from one eval-mode forward of a size x size input."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        outs = run_plan(model, plan, torch.zeros(1, in_channels(model), size, size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return [(o.shape[1], size // o.shape[-1]) for o in outs]
