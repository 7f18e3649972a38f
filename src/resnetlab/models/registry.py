"""Name → factory registry in the style of timm's `create_model`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from . import myrtle, resnet
from ..errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    input_size: int  # natural input resolution (pixels per side)
    family: str


_SPECS: dict[str, ModelSpec] = {}


def _register(name: str, factory: Callable[..., nn.Module], input_size: int, family: str) -> None:
    _SPECS[name] = ModelSpec(name, factory, input_size, family)


for _d in (18, 34, 50, 101, 152):
    _register(f"resnet{_d}", getattr(resnet, f"resnet{_d}"), 224, "imagenet")
for _d in (20, 32, 44, 56, 110, 1202):
    _register(f"resnet{_d}", getattr(resnet, f"resnet{_d}"), 32, "cifar")
_register("preact_resnet18", resnet.preact_resnet18, 32, "cifar")
_register("resnet9", myrtle.resnet9, 32, "cifar")
_register("resnet9_small", myrtle.resnet9_small, 32, "cifar")


def list_models() -> list[str]:
    return list(_SPECS)


def get_spec(name: str) -> ModelSpec:
    if name not in _SPECS:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(_SPECS)}")
    return _SPECS[name]


def natural_input_size(name: str, **kwargs: Any) -> int:
    """32 for CIFAR nets and for ImageNet ResNets built with stem='cifar', else 224."""
    spec = get_spec(name)
    if spec.family == "imagenet" and kwargs.get("stem", "imagenet") == "cifar":
        return 32
    return spec.input_size


def create_model(name: str, num_classes: int = 10, pretrained: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a model by name. `pretrained` is a path to weights (resnetlab .safetensors or a
    torchvision-format .pth state_dict) loaded into every tensor except a mismatched head."""
    spec = get_spec(name)
    try:
        model = spec.factory(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise UserError(f"model {name!r}: bad argument ({e})") from None
    if pretrained:
        from ..finetune import load_backbone_weights
        load_backbone_weights(model, pretrained, verbose=False)
    return model
