"""Models: residual blocks, the model contract, the ResNet family, ResNet-9, the registry, the checkpoint
schema and freeze policies. Importing this package registers every family."""
from .blocks import BasicBlock, Bottleneck, PreActBlock, ResidualBlock, ZeroPadShortcut
from .contract import ClassifierNet
from .registry import (build_model, create_model, get_spec, list_models, natural_input_size, register_model,
                       validate_model_args)
from .resnet import (ResNet, preact_resnet18, resnet18, resnet20, resnet32, resnet34, resnet44, resnet50,
                     resnet56, resnet101, resnet110, resnet152, resnet1202)
from .myrtle import ResNet9, resnet9, resnet9_small
from .checkpoint import load_model, validate_meta
from .freeze import apply_strategy, stage_lr_scales

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBlock", "ResidualBlock", "ZeroPadShortcut", "ClassifierNet", "ResNet",
    "ResNet9", "create_model", "build_model", "load_model", "validate_meta", "list_models", "get_spec",
    "natural_input_size", "validate_model_args", "register_model", "apply_strategy", "stage_lr_scales",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20", "resnet32", "resnet44",
    "resnet56", "resnet110", "resnet1202", "preact_resnet18", "resnet9", "resnet9_small",
]
