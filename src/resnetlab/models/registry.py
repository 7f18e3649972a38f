"""Name → model, in the style of timm's `create_model`, with every model argument declared.

Model kwargs arrive from recipes, the command line and checkpoint metadata, i.e. from files users
did not necessarily write. They are data: each one is checked against the model's declared arguments
(type and range) before anything is built, and nothing here opens or fetches a file named by them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..preprocessing import RESIZE_MODES
from ..weights import load_backbone_weights, read_checkpoint
from .myrtle import resnet9, resnet9_small
from .resnet import ARCHS, STEMS, build_resnet


@dataclass(frozen=True)
class Arg:
    """One declared model argument: a check that returns an error text (or None) and a help text."""

    check: Callable[[Any], str | None]
    help: str


def _int_list(n: int | None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                  for x in v)
        if not ok or (n is not None and len(v) != n):
            return f"expected a list of {n if n else 'N'} positive integers"
        return None
    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"expected one of {', '.join(options)}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def _pos_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "expected a positive integer"


def _pos_float(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    return None if ok else "expected a positive number"


def _resnet_args(n_stages: int, cifar: bool) -> dict[str, Arg]:
    args = {
        "widths": Arg(_int_list(n_stages), f"channels of the {n_stages} stages"),
        "stem": Arg(_choice(*STEMS), "imagenet (7x7/2 conv + max-pool) or cifar (3x3/1 conv)"),
        "stem_width": Arg(_pos_int, "channels of the stem conv (default: first stage width)"),
        "zero_init_residual": Arg(_bool, "start every residual branch at zero (Goyal et al. 2017)"),
        "in_channels": Arg(_pos_int, "input channels"),
        "shortcut": Arg(_choice("A", "B"), "A: zero-padded identity, B: 1x1 projection"),
        "block": Arg(_choice("standard", "separable"), "separable: every 3x3 conv depthwise + pointwise"),
        **_REGULARISERS,
    }
    if cifar:
        args["option"] = Arg(_choice("A", "B"), "the paper's name for `shortcut`")
    return args


def _rate(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
    return None if ok else "expected a number in [0, 1)"


_REGULARISERS = {
    "drop_rate": Arg(_rate, "dropout before the classifier (0: off)"),
    "drop_path_rate": Arg(_rate, "stochastic depth of the last residual block, rising linearly from 0 "
                          "over the blocks (0: off)"),
}

_RESNET9_ARGS = {
    "widths": Arg(_int_list(4), "channels of prep, layer1, layer2, layer3"),
    "in_channels": Arg(_pos_int, "input channels"),
    "head_scale": Arg(_pos_float, "logit scale (Myrtle: 0.125)"),
    "whiten": Arg(_bool, "fixed 3x3 patch-whitening first layer"),
    "whiten_eps": Arg(_pos_float, "whitening regulariser: filters scale by 1/sqrt(eigenvalue + eps); larger "
                      "amplifies fine detail (and JPEG noise) less"),
    "block": Arg(_choice("standard", "separable"), "separable: every 3x3 conv after the input layer "
                 "depthwise + pointwise"),
    "pool_first": Arg(_bool, "conv → max-pool → BN → ReLU in the pooling layers (airbench's order; "
                      "cheaper on CPUs)"),
    "dirac": Arg(_bool, "the first c_in filters of each conv start as the identity (airbench)"),
    **_REGULARISERS,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    input_size: int  # natural input resolution (pixels per side)
    family: str
    args: dict[str, Arg]


_SPECS: dict[str, ModelSpec] = {}
for _name, _arch in ARCHS.items():
    # the paper's CIFAR nets (option A by default) also accept the paper's name for the shortcut: `option`
    _SPECS[_name] = ModelSpec(_name, functools.partial(build_resnet, _name),
                              224 if _arch.family == "imagenet" else 32, _arch.family,
                              _resnet_args(len(_arch.layers), dict(_arch.defaults).get("shortcut") == "A"))
_SPECS["resnet9"] = ModelSpec("resnet9", resnet9, 32, "cifar", _RESNET9_ARGS)
_SPECS["resnet9_small"] = ModelSpec("resnet9_small", resnet9_small, 32, "cifar", _RESNET9_ARGS)


def list_models() -> list[str]:
    return list(_SPECS)


def get_spec(name: Any) -> ModelSpec:
    if not isinstance(name, str) or name not in _SPECS:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(_SPECS)}")
    return _SPECS[name]


def validate_model_args(name: str, kwargs: Any, where: str = "model.kwargs") -> dict[str, Any]:
    """Check kwargs against the model's declared arguments; one UserError naming the first bad key."""
    spec = get_spec(name)
    if not isinstance(kwargs, dict):
        raise UserError(f"{where}: expected a mapping of model arguments, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        arg = spec.args.get(key)
        if arg is None:
            raise UserError(f"{where}.{key}: {name} has no argument {key!r}; allowed: {', '.join(spec.args)}")
        problem = arg.check(value)
        if problem:
            raise UserError(f"{where}.{key}={value!r}: {problem} ({arg.help})")
    return dict(kwargs)


def natural_input_size(name: str, **kwargs: Any) -> int:
    """32 for CIFAR nets and for ImageNet ResNets built with stem='cifar', else 224."""
    spec = get_spec(name)
    if spec.family == "imagenet" and kwargs.get("stem", "imagenet") == "cifar":
        return 32
    return spec.input_size


def _check_num_classes(num_classes: Any) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def build_model(name: str, num_classes: int, kwargs: dict[str, Any] | None = None,
                where: str = "model.kwargs") -> nn.Module:
    """Build from a validated (name, kwargs) pair: what recipes and checkpoints describe. Loads nothing."""
    spec = get_spec(name)
    kwargs = validate_model_args(name, kwargs or {}, where)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return spec.factory(num_classes=_check_num_classes(num_classes), **kwargs)
    except (ValueError, TypeError) as e:  # a combination the architecture cannot build
        raise UserError(f"{where}: {name} cannot be built with {kwargs} ({e})") from None


def create_model(name: str, num_classes: int = 10, pretrained: str | Path | None = None,
                 features_only: bool = False, out_indices: Sequence[int] | None = None,
                 output_stride: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name (Python API). `pretrained` is a path to weights (resnetlab .safetensors,
    a torchvision-format .pth state_dict, or `torchvision:NAME`), loaded into every tensor except a
    mismatched head. Only the caller can ask for a file to be read; kwargs never do.

    features_only=True returns a backbones.FeatureExtractor instead (the feature maps of `out_indices`:
    0 = stem, i = stage i; default all stages), with `feature_info`; `output_stride` (8, 16, …) trades
    the last strides for dilation, as segmentation backbones do."""
    model = build_model(name, num_classes, kwargs, where=f"create_model({name!r})")
    if pretrained:
        load_backbone_weights(model, pretrained, verbose=False)
    if features_only:
        from .backbones import FeatureExtractor
        return FeatureExtractor(model, out_indices, output_stride)
    if out_indices is not None or output_stride is not None:
        raise UserError("out_indices and output_stride need features_only=True")
    return model


META_KEYS = {"arch", "kwargs", "num_classes", "classes", "mean", "std", "input_size", "resize", "recipe",
             "dataset", "metrics", "epoch", "step", "finetuned_from", "format_version"}


def validate_meta(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata as data: known keys only, each of the right type."""
    unknown = sorted(set(meta) - META_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown checkpoint metadata key(s) {', '.join(unknown)}; not a checkpoint "
                        f"written by resnetlab")
    if "arch" not in meta:
        raise UserError(f"{path}: not a resnetlab checkpoint (no architecture metadata)")
    get_spec(meta["arch"])
    validate_model_args(meta["arch"], meta.get("kwargs") or {}, where=f"{path}: kwargs")
    _check_num_classes(meta.get("num_classes"))
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) == meta["num_classes"]
            and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{path}: metadata 'classes' must be a list of {meta['num_classes']} names")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise UserError(f"{path}: metadata {key!r} must be a list of 3 numbers")
    if any(x <= 0 for x in meta["std"]):
        raise UserError(f"{path}: metadata 'std' must be positive")
    resize = meta.get("resize")
    ds = resize.get("decode_size", 32) if isinstance(resize, dict) else None
    if resize is not None and not (isinstance(resize, dict) and set(resize) <= {"decode_size", "mode"}
                                   and resize.get("mode", "squash") in RESIZE_MODES
                                   and isinstance(ds, int) and not isinstance(ds, bool) and 8 <= ds <= 4096):
        raise UserError(f"{path}: metadata 'resize' must be {{mode: {' | '.join(RESIZE_MODES)}, decode_size: "
                        f"8..4096}}")
    size = meta.get("input_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096):
        raise UserError(f"{path}: metadata 'input_size' must be an integer between 8 and 4096")
    return meta


def load_model(path: str | Path, device: torch.device | str = "cpu", features_only: bool = False,
               out_indices: Sequence[int] | None = None,
               output_stride: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a resnetlab checkpoint: (model in eval mode, metadata); with
    features_only, its backbones.FeatureExtractor (see create_model)."""
    weights, meta = read_checkpoint(path)
    meta = validate_meta(meta, path)
    model = build_model(meta["arch"], meta["num_classes"], meta.get("kwargs") or {}, where=f"{path}: kwargs")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match {meta['arch']} ({str(e).splitlines()[0]})") from None
    if features_only:
        from .backbones import FeatureExtractor
        model = FeatureExtractor(model, out_indices, output_stride)
    return model.to(device).eval(), meta
