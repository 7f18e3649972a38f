"""Recipes as dataclasses, read from YAML and overridden with key=value pairs.

Every bad key or value is a UserError naming the key and what is allowed, so a typo in a recipe never
silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.augment import AugmentConfig
from ..errors import UserError
from ..models import validate_model_args


@dataclass
class ModelConfig:
    name: str = "resnet20"
    kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "cifar10"        # cifar10 | cifar100 | folder
    path: str | None = None         # dataset folder: an image folder, a .csv/.jsonl manifest or .tar shards
    val_size: float = 0.1           # images (>=1) or fraction (<1) held out for validation; 0 = none
    split_seed: int = 0
    test_fraction: float = 0.2      # image folders without train/ + test/: share held out as test
    image_size: int | None = None   # resize inputs (e.g. 64 for a pretrained net); None = native
    verify: bool = True
    strict: bool = False
    subset: int = 0                 # use a stratified slice of N training (and N/5 test) images; 0 = all
    workers: int = 0                # processes decoding a folder into its cache; 0 = one per core
    order: str = "auto"             # random | quasi-random (chunked reads) | auto: quasi-random when the
                                    # decoded data is bigger than the memory available
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the batch pipeline's own config


@dataclass
class OptimConfig:
    name: str = "sgd"               # sgd | adam | adamw | muon (conv filters: Muon; the rest: SGD as configured)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False  # exclude BN weights/biases and all biases from weight decay
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    muon_lr: float = 0.24           # muon: the filters' learning rate (the update is orthogonalised, so this
                                    # does not scale with the batch or the loss); schedule as lr's
    muon_momentum: float = 0.6      # muon: Nesterov momentum of the filters
    muon_ns_steps: int = 3          # muon: Newton-Schulz iterations per step
    bias_lr: float = 0.0            # peak lr of BN parameters and biases (ndim <= 1); 0 = optim.lr


@dataclass
class ScheduleConfig:
    name: str = "cosine"            # constant | multistep | cosine | onecycle
    unit: str = "epoch"             # epoch | iter : unit of milestones and warmup
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    warmup: float = 0               # linear warm-up length (in `unit`)
    pct_start: float = 0.25         # onecycle: fraction of training spent rising to the peak
    final_lr_frac: float = 0.0      # cosine/onecycle: lr at the end as a fraction of the peak


@dataclass
class DistillConfig:
    teacher: str | None = None      # knowledge distillation from this resnetlab checkpoint (same classes); None: off
    alpha: float = 0.5              # loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T
    temperature: float = 4.0


@dataclass
class EarlyStopConfig:
    patience: int = 0               # epochs without improvement before stopping; 0 = off
    min_delta: float = 0.0
    metric: str = "val_top1"        # val_top1 | val_loss | val_top5


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int = 0              # stop after this many iterations (the paper counts 64k); 0 = off
    batch_size: int = 128
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    ema_decay: float = 0.0          # 0 = no EMA; else evaluate and save the EMA weights
    lookahead_every: int = 0        # 0 = off; else Lookahead with airbench's rising pull every N steps
    lookahead_decay: float = 0.95   # per-step decay of the Lookahead pull (d = decay**N * progress**3)
    grad_clip: float = 0.0
    seed: int = 0
    deterministic: bool = False
    precision: str = "auto"         # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"     # auto | true | false
    compile: bool = False
    device: str = "auto"            # auto | cpu | cuda | cuda:N | mps
    tta: bool = False               # flips (+ tta_shift's moved views) for the final test; per-epoch eval stays plain
    tta_shift: int = 0              # with tta: also the two views moved by ±N pixels (6 views in all)
    eval_every: int = 1             # monitoring on test (no val split): every N epochs and after the last
    log_every: int = 50
    checkpoint_every_min: float = 0  # also write last.safetensors every N minutes mid-epoch (exact resume); 0 = off
    sync_bn: bool = False           # distributed runs: BatchNorm statistics over the whole global batch
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class FinetuneConfig:
    strategy: str = "two-stage"     # linear-probe | partial | full | two-stage
    unfreeze_stages: int = 1        # partial: how many of the last stages train (with the head)
    stage1_epochs: int = 5          # two-stage: head-only epochs (stops earlier on early stopping)
    stage2_lr_mult: float = 0.5     # two-stage: stage-2 learning rate relative to optim.lr
    freeze_bn_stats: bool = False   # two-stage stage 2 / partial / full: keep BN running stats frozen
    layer_decay: float = 1.0        # discriminative lr: stage k of K gets lr * decay**(K-k); 1 = off
    compare: bool = True            # also report a linear probe of the pretrained net (before/after)
    cached_features: bool = True    # head-only training (linear probe, two-stage stage 1) on the frozen
                                    # backbone's pooled features, computed once per run
    feature_views: int = 1          # ... of each training image: 1 = as stored, K > 1 adds K-1 augmented views


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""           # one line: what it trains, its headline figure and the machine measured on
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        """Plain data (tuples as lists): what YAML, JSON and checkpoint metadata hold."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


CHOICES = {
    "data.dataset": ("cifar10", "cifar100", "folder"),
    "data.order": ("auto", "random", "quasi-random"),
    "data.augment.pad_mode": ("zeros", "reflect"),
    "data.augment.flip_mode": ("random", "alternate"),
    "optim.name": ("sgd", "adam", "adamw", "muon"),
    "schedule.name": ("constant", "multistep", "cosine", "onecycle"),
    "schedule.unit": ("epoch", "iter"),
    "train.early_stopping.metric": ("val_top1", "val_top5", "val_loss"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.channels_last": ("auto", "true", "false"),
    "finetune.strategy": ("linear-probe", "partial", "full", "two-stage"),
}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise UserError(f"recipe key {key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(f"recipe key {key}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"recipe key {key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise UserError(f"recipe key {key}: expected a string, got {value!r}")
        value = str(value)
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"recipe key {key}: {value!r} is not allowed; choose one of "
                            f"{', '.join(CHOICES[key])}")
        return value
    if typ is tuple or typing.get_origin(typ) is tuple:  # fixed-size settings (pairs, per-epoch sizes): checked by validate()
        if not isinstance(value, (list, tuple)):
            raise UserError(f"recipe key {key}: expected a list, got {value!r}")
        return tuple(value)
    if typ in (list, dict) or typing.get_origin(typ) in (list, dict):
        want = typing.get_origin(typ) or typ
        if not isinstance(value, want):
            raise UserError(f"recipe key {key}: expected a {want.__name__}, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"recipe section {prefix or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"unknown recipe key {full}; allowed keys{' in ' + prefix[:-1] if prefix else ''}: "
                            f"{', '.join(names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, full + ".")
        else:
            kwargs[key] = _coerce(value, typ, full)
    return cls(**kwargs)


def recipe_from_dict(data: dict) -> Recipe:
    recipe = _build(Recipe, data, "")
    validate(recipe)
    return recipe


# (low, high, low inclusive, high inclusive) of every numeric key; None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.val_size": (0, None, True, True),
    "data.split_seed": (0, None, True, True),
    "data.test_fraction": (0, 1, False, False),
    "data.image_size": (8, 4096, True, True),
    "data.subset": (0, None, True, True),
    "data.workers": (0, 512, True, True),
    "data.augment.crop_padding": (0, 64, True, True),
    "data.augment.cutout": (0, 4096, True, True),
    "data.augment.jpeg": (0, 1, True, True),
    "data.augment.resample": (0, 1, True, True),
    "data.augment.noise": (0, 1, True, True),
    "data.augment.artifacts_from_epoch": (0, None, True, True),
    "optim.lr": (0, None, False, True),
    "optim.momentum": (0, 1, True, False),
    "optim.weight_decay": (0, None, True, True),
    "optim.muon_lr": (0, None, False, True),
    "optim.muon_momentum": (0, 1, True, False),
    "optim.muon_ns_steps": (1, 10, True, True),
    "optim.bias_lr": (0, None, True, True),
    "schedule.gamma": (0, None, False, True),
    "schedule.warmup": (0, None, True, True),
    "schedule.pct_start": (0, 1, True, False),
    "schedule.final_lr_frac": (0, 1, True, True),
    "train.epochs": (1, None, True, True),
    "train.max_steps": (0, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.eval_batch_size": (1, None, True, True),
    "train.label_smoothing": (0, 1, True, False),
    "train.ema_decay": (0, 1, True, False),
    "train.lookahead_every": (0, None, True, True),
    "train.lookahead_decay": (0, 1, True, True),
    "train.grad_clip": (0, None, True, True),
    "train.seed": (0, 2**63 - 1, True, True),
    "train.log_every": (1, None, True, True),
    "train.tta_shift": (0, 8, True, True),
    "train.eval_every": (1, None, True, True),
    "train.checkpoint_every_min": (0, None, True, True),
    "train.early_stopping.patience": (0, None, True, True),
    "train.early_stopping.min_delta": (0, None, True, True),
    "train.distill.alpha": (0, 1, True, True),
    "train.distill.temperature": (0, 100, False, True),
    "finetune.unfreeze_stages": (1, None, True, True),
    "finetune.stage1_epochs": (1, None, True, True),
    "finetune.stage2_lr_mult": (0, None, False, True),
    "finetune.layer_decay": (0, 1, False, True),
    "finetune.feature_views": (1, 64, True, True),
}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _get(r: Recipe, key: str) -> Any:
    node: Any = r
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _range_text(lo, hi, lo_inc, hi_inc) -> str:
    if hi is None:
        return f"must be {'>=' if lo_inc else '>'} {lo}"
    return f"must be in {'[' if lo_inc else '('}{lo}, {hi}{']' if hi_inc else ')'}"


def validate(r: Recipe) -> None:
    """Every value in range, and the combinations that cannot work refused, so a
    bad recipe fails in a second rather than after an epoch."""
    for key, (lo, hi, lo_inc, hi_inc) in RANGES.items():
        v = _get(r, key)
        if v is None:
            continue
        ok = math.isfinite(v) and (lo is None or (v >= lo if lo_inc else v > lo)) and (
            hi is None or (v <= hi if hi_inc else v < hi))
        if not ok:
            raise UserError(f"recipe key {key}: {_range_text(lo, hi, lo_inc, hi_inc)}, got {v!r}")
    if not NAME_PATTERN.fullmatch(r.name) or r.name in (".", ".."):
        raise UserError(f"recipe key name: {r.name!r} is not a plain run name (letters, digits, '-', '_', '.'; "
                        f"at most 100); choose another place with --out instead")
    ms = r.schedule.milestones
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m >= 0 for m in ms) \
            or list(ms) != sorted(ms):
        raise UserError(f"recipe key schedule.milestones: expected increasing non-negative numbers, got {ms!r}")
    if r.schedule.name == "multistep" and not ms:
        raise UserError("recipe key schedule.milestones: multistep needs a non-empty list of milestones")
    b = r.optim.betas
    if not (len(b) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b)):
        raise UserError(f"recipe key optim.betas: expected two numbers in [0, 1), got {b!r}")
    for key, lo, hi in (("data.augment.jpeg_quality", 1, 100), ("data.augment.resample_scale", 1, 16),
                        ("data.augment.noise_std", 0, 64)):
        pair = _get(r, key)
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and lo <= x <= hi for x in pair)
                and pair[0] <= pair[1]):
            raise UserError(f"recipe key {key}: expected [low, high] with {lo} <= low <= high <= {hi}, got {pair!r}")
    sizes = r.data.augment.epoch_sizes
    if not all(isinstance(x, int) and not isinstance(x, bool) and 8 <= x <= 4096 for x in sizes):
        raise UserError(f"recipe key data.augment.epoch_sizes: expected a list of image sides (integers from "
                        f"8 to 4096), one per early epoch, got {sizes!r}")
    if r.data.dataset == "folder" and not r.data.path:
        raise UserError("recipe key data.path: dataset 'folder' needs data.path")
    if r.train.early_stopping.patience and not r.data.val_size:
        raise UserError("recipe key train.early_stopping.patience: early stopping needs a validation split "
                        "(data.val_size > 0); it never stops on the test split")
    validate_model_args(r.model.name, r.model.kwargs, where="recipe key model.kwargs")


BUNDLED = "recipes"  # the folder of YAML recipes inside the package


def bundled_recipes() -> dict[str, Any]:
    """Name → the bundled recipe file (an importlib.resources Traversable), sorted by name."""
    folder = resources.files("resnetlab").joinpath(BUNDLED)
    return {f.name[:-5]: f for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".yaml")}


def recipe_text(ref: str | Path) -> tuple[str, str, str]:
    """(YAML text, where it came from, default run name) of a recipe given as a file path or a bundled name
    (`cifar10_quick` or `cifar10_quick.yaml`). A path that exists wins over a bundled name."""
    p = Path(ref)
    if p.is_file():
        try:
            return p.read_text(encoding="utf-8"), str(p), p.stem
        except UnicodeDecodeError:
            raise UserError(f"{p}: not a text file (a recipe is UTF-8 YAML)") from None
        except OSError as e:
            raise UserError(f"{p}: cannot read recipe ({e.strerror})") from None
    bundled = bundled_recipes()
    name = str(ref)[:-5] if str(ref).endswith(".yaml") else str(ref)
    if name in bundled:
        return bundled[name].read_text(encoding="utf-8"), f"bundled recipe {name}", name
    if p.is_dir():
        raise UserError(f"{p}: is a folder, not a recipe file")
    raise UserError(f"{ref}: no such recipe file and no bundled recipe of that name; bundled: "
                    f"{', '.join(bundled)} (see `resnetlab recipes`)")


def load_recipe(path: str | Path | None, overrides: list[str] = (), literal: dict[str, Any] | None = None,
                base: dict | None = None) -> Recipe:
    """Read a recipe (a YAML file or a bundled name; `base`, or the dataclass defaults, when both are None) and
    apply dotted key=value overrides.

    Override values are YAML (`optim.lr=1e-3`, `model.kwargs.widths=[32,64]`); `literal` values are taken
    as they are, for command-line options whose value is a path or a name (`imgs #2` stays `imgs #2`).
    """
    data: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        text, where, stem = recipe_text(path)
        try:
            data = load_yaml(text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{where}: a recipe must be a YAML mapping")
        data.setdefault("name", stem)
    data = apply_overrides(data, overrides, literal)
    return recipe_from_dict(data)


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, plus the floats YAML 1.2 allows and 1.1 does not (1e-12, 5E3, 2.5e-4 without
    an exponent sign): else they arrive as strings and fail the model arguments' number checks."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def apply_overrides(data: dict, overrides: list[str] = (), literal: dict[str, Any] | None = None) -> dict:
    """A copy of recipe data with dotted key=value overrides (YAML values) and `literal` ones applied."""
    data = copy.deepcopy(data)
    keys = [item.split("=", 1)[0].strip() for item in overrides] + list(literal or {})
    if "model.name" in keys and isinstance(data.get("model"), dict):
        # kwargs belong to the recipe's model (e.g. resnet9 widths); a new model starts from its defaults,
        # plus the model.kwargs.* given beside it
        data["model"].pop("kwargs", None)
    pairs: list[tuple[str, Any]] = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value, e.g. optim.lr=0.05")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    pairs += list((literal or {}).items())
    for key, value in pairs:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return data


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what a run folder's recipe.yaml holds; `--recipe` reads it back)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None, width=110)


def recipe_keys() -> list[tuple[str, str, Any, str]]:
    """Every recipe key: (dotted key, type, default, what is allowed), in recipe order."""
    out: list[tuple[str, str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, typ = prefix + f.name, hints[f.name]
            if dataclasses.is_dataclass(typ):
                walk(typ, key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            allowed = ""
            if key in CHOICES:
                allowed = " | ".join(CHOICES[key])
            elif key in RANGES:
                allowed = _range_text(*RANGES[key]).removeprefix("must be ")
            name = "list" if typing.get_origin(typ) in (tuple, list) else (
                getattr(typ, "__name__", None) or str(typ).replace("typing.", ""))
            out.append((key, name, default, allowed))
    walk(Recipe, "")
    return out
