"""Models: residual blocks, the model contract, the ResNet family, ResNet-9, the registry, the checkpoint
schema and freeze policies. Importing this package registers every family; every registered ResNet row is
exported here as its factory (`resnetlab.models.resnet50(num_classes=...)`)."""
from .blocks import BasicBlock, Bottleneck, PreActBlock, ResidualBlock, ZeroPadShortcut
from .contract import ClassifierNet
from .registry import (build_model, create_model, get_spec, list_models, natural_input_size, register_model,
                       validate_model_args)
from .resnet import FACTORIES, Arch, ResNet, register_arch
from .myrtle import ResNet9, resnet9, resnet9_small
from .checkpoint import CheckpointMeta, load_model, read_meta
from .freeze import apply_strategy, stage_lr_scales

globals().update(FACTORIES)

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBlock", "ResidualBlock", "ZeroPadShortcut", "ClassifierNet", "ResNet",
    "ResNet9", "Arch", "register_arch", "create_model", "build_model", "load_model", "CheckpointMeta", "read_meta",
    "list_models", "get_spec", "natural_input_size", "validate_model_args", "register_model", "apply_strategy",
    "stage_lr_scales", "resnet9", "resnet9_small", *FACTORIES,
]
