from .blocks import BasicBlock, Bottleneck, PreActBlock, ZeroPadShortcut
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .resnet import resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202, preact_resnet18
from .myrtle import ResNet9, resnet9, resnet9_small
from .registry import create_model, list_models, get_spec, natural_input_size

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBlock", "ZeroPadShortcut", "ResNet", "ResNet9", "create_model",
    "list_models", "get_spec", "natural_input_size", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "preact_resnet18", "resnet9", "resnet9_small",
]
