"""Name → model, in the style of timm's `create_model` and `@register_model`.

A family registers plain factories with `@register_model(...)`. Their user-facing arguments are read from
the constructor's signature (the annotation gives the check, by schema.conform as for recipe keys: bool, int, float,
a Literal of choices, a sequence of ints, or None), narrowed by a small map of constraints (ranges, the number of
stage widths), and explained by the class's own docstring (its "Args:" section). Model kwargs arrive from recipes, the command line and
checkpoint metadata, i.e. from files users did not necessarily write: they are data, each checked before
anything is built, and nothing here opens or fetches a file named by them.
"""
from __future__ import annotations

import collections.abc
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import UserError
from ..schema import Mismatch, Range, conform, optional_inner
from ..weights import load_backbone_weights


@dataclass(frozen=True)
class Arg:
    """One model argument: a check that returns an error text (or None) and a help text."""

    check: Callable[[Any], str | None]
    help: str


def documented_args(builds: Callable) -> dict[str, str]:
    """The help of each argument, from the "Args:" section of the docstring of the class (or function) that
    defines them, as Google-style docstrings write it: `name: text` lines, continuation lines indented deeper."""
    doc = inspect.getdoc(builds) or ""
    out: dict[str, str] = {}
    current = None
    lines = doc.split("Args:", 1)[1].splitlines() if "Args:" in doc else []
    indent = None
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        name, sep, text = line.strip().partition(": ")
        if depth == indent and sep and name.isidentifier():
            current = name
            out[name] = text.strip()
        elif current is not None:
            out[current] += " " + line.strip()
    return {name: text.rstrip(".") for name, text in out.items()}


# Bounds beyond the annotation's type, with what to say when a value is out of them; other ints must be >= 1 and
# other floats > 0.
CONSTRAINTS: dict[str, tuple[Range, str]] = {
    "drop_rate": (Range(0, 1, True, False), "expected a number in [0, 1)"),
    "drop_path_rate": (Range(0, 1, True, False), "expected a number in [0, 1)"),
    "block_dropout": (Range(0, 1, True, False), "expected a number in [0, 1)"),
    "se_reduction": (Range(0), "expected an integer >= 0"),
}
POSITIVE = {int: (Range(1), "expected a positive integer"), float: (Range(0, None, False), "expected a positive number")}


def _check_for(typ: Any, name: str, n_stages: int | None) -> Callable[[Any], str | None]:
    """The check of one argument: its annotation (schema.conform, as for recipe keys), then its bounds (CONSTRAINTS,
    else positive) or, for a sequence of ints such as `widths`, positive entries and the stage count."""
    inner, optional = optional_inner(typ)
    origin = typing.get_origin(inner)
    if origin in (collections.abc.Sequence, list, tuple) or inner in (list, tuple):
        wrong = f"expected a list of {n_stages if n_stages else 'N'} positive integers"

        def ints(v: Any) -> str | None:
            if v is None and optional:
                return None
            try:
                items = conform(v, collections.abc.Sequence[int])
            except Mismatch:
                return wrong
            return None if all(x >= 1 for x in items) and (n_stages is None or len(items) == n_stages) else wrong
        return ints
    bounds, out_of_bounds = CONSTRAINTS.get(name) or POSITIVE.get(inner, (None, ""))

    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        try:
            v = conform(v, typ)
        except Mismatch as e:
            return out_of_bounds if bounds is not None and inner in (int, float) else str(e)
        return out_of_bounds if bounds is not None and not bounds.contains(v) else None
    return check


def signature_args(builds: Callable, exclude: Sequence[str] = (), rename: dict[str, str] | None = None,
                   aliases: dict[str, str] | None = None, n_stages: int | None = None) -> dict[str, Arg]:
    """User-facing arguments of a constructor: its parameters minus `exclude`, some offered under another
    name (`rename`: parameter → user name), plus `aliases` (extra user name → user name, same check)."""
    rename, aliases = rename or {}, aliases or {}
    hints = typing.get_type_hints(builds.__init__ if isinstance(builds, type) else builds)
    docs = documented_args(builds)
    out: dict[str, Arg] = {}
    for pname in inspect.signature(builds).parameters:
        if pname in exclude or pname in ("self", "num_classes", "kwargs"):
            continue
        user = rename.get(pname, pname)
        out[user] = Arg(_check_for(hints[pname], pname, n_stages), docs.get(pname, ""))
        for alias, target in aliases.items():
            if target == user:
                out[alias] = Arg(out[user].check, f"another name for `{user}`: {out[user].help}")
    return out


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    input_size: int  # natural input resolution (pixels per side)
    family: str      # "imagenet" (224 px, 7x7 stem) or "cifar" (32 px)
    args: dict[str, Arg]
    n_stages: int | None = None  # how many `widths` it takes


_SPECS: dict[str, ModelSpec] = {}


def register_model(*, family: str, builds: type, input_size: int | None = None, exclude: Sequence[str] = (),
                   rename: dict[str, str] | None = None, aliases: dict[str, str] | None = None,
                   n_stages: int | None = None) -> Callable:
    """Decorator for a plain factory `def name(num_classes=..., **kwargs) -> nn.Module`: registers it under
    its function name, with the arguments of `builds` (see signature_args) as the ones it accepts."""
    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = factory.__name__
        if name in _SPECS:
            raise ValueError(f"model {name} is registered twice")
        size = input_size or (224 if family == "imagenet" else 32)
        _SPECS[name] = ModelSpec(name, factory, size, family, signature_args(builds, exclude, rename, aliases, n_stages),
                                 n_stages)
        return factory
    return register


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
            raise UserError(f"{where}.{key}={value!r}: {problem}{f' ({arg.help})' if arg.help else ''}")
    return dict(kwargs)


def natural_input_size(name: str, **kwargs: Any) -> int:
    """32 for CIFAR nets and for ImageNet ResNets built with stem='cifar', else 224."""
    spec = get_spec(name)
    if spec.family == "imagenet" and kwargs.get("stem", "imagenet") == "cifar":
        return 32
    return spec.input_size


def check_num_classes(num_classes: Any) -> int:
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
        return spec.factory(num_classes=check_num_classes(num_classes), **kwargs)
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
