"""Models: residual blocks, the ResNet family, ResNet-9, the registry and freeze policies."""
from .blocks import BasicBlock, Bottleneck, PreActBlock, ZeroPadShortcut
from .freeze import apply_strategy, stage_lr_scales
from .myrtle import ResNet9, resnet9, resnet9_small
from .registry import (build_model, create_model, get_spec, list_models, load_model, natural_input_size,
                       validate_model_args)
from .resnet import (ResNet, preact_resnet18, resnet18, resnet20, resnet32, resnet34, resnet44, resnet50,
                     resnet56, resnet101, resnet110, resnet152, resnet1202)

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBlock", "ZeroPadShortcut", "ResNet", "ResNet9", "create_model",
    "build_model", "load_model", "list_models", "get_spec", "natural_input_size", "validate_model_args",
    "apply_strategy", "stage_lr_scales", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "preact_resnet18", "resnet9",
    "resnet9_small",
]
