"""Recipes as dataclasses, read from YAML and overridden with key=value pairs.

Every bad key or value is a UserError naming the key and what is allowed, so a typo in a recipe never
silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data.augment import AugmentConfig
from ..errors import UserError
from ..models import validate_model_args
from ..schema import Key, Mismatch, choices, conform, keys_of, setting, shown


# Every recipe key is declared once, here: its type (a Literal lists the choices), its range, whether a resumed
# run may change it (resume=True: it extends or rescues a run without making it a different experiment) and its
# help. Validation, `resnetlab recipes keys`, --resume, tune's search space and the CLI's choices read them.
@dataclass
class ModelConfig:
    name: str = setting("resnet20", help="a registered model (resnetlab models)")
    kwargs: dict = setting(factory=dict, help="the model's arguments (checked against its constructor)")


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "cifar100", "folder"] = setting("cifar10", help="folder: images named by data.path")
    path: str | None = setting(None, help="dataset folder: an image folder, a .csv/.jsonl manifest or .tar shards")
    val_size: float = setting(0.1, range=(0, None), help="images (>=1) or fraction (<1) held out for validation; "
                              "0 = none")
    split_seed: int = setting(0, range=(0, None), help="seed of the validation (and folder test) split draw")
    test_fraction: float = setting(0.2, range=(0, 1, False, False), help="image folders without train/ + test/: "
                                   "share held out as test")
    image_size: int | None = setting(None, range=(8, 4096), help="resize inputs (e.g. 64 for a pretrained net); "
                                     "None = native")
    verify: bool = setting(True, resume=True, help="check the official checksums of CIFAR files")
    strict: bool = setting(False, resume=True, help="an unreadable image stops the run instead of being skipped")
    subset: int = setting(0, range=(0, None), help="use a stratified slice of N training images, and test on "
                          "N/5 test images (`resnetlab eval --full-test` tests on all); 0 = all")
    workers: int = setting(0, range=(0, 512), resume=True, help="processes decoding a folder into its cache; "
                           "0 = one per core")
    order: Literal["auto", "random", "quasi-random", "balanced"] = setting(
        "auto", help="quasi-random: chunked reads; auto: quasi-random when the decoded data is bigger than the "
        "memory available; balanced: each epoch draws as many images with replacement, every class equally likely "
        "(imbalanced folders)")
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the batch pipeline's own config


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "muon"] = setting("sgd", help="muon: Muon on the conv filters, the rest "
                                                             "SGD as configured")
    lr: float = setting(0.1, range=(0, None, False), resume=True, help="peak learning rate (the schedule scales "
                        "it); `resnetlab lr-find` suggests one")
    momentum: float = setting(0.9, range=(0, 1, True, False), help="SGD momentum (Adam: beta1 is in betas)")
    nesterov: bool = setting(False, help="SGD: Nesterov momentum")
    weight_decay: float = setting(1e-4, range=(0, None), help="L2 penalty (decoupled for adamw)")
    no_decay_bn_bias: bool = setting(False, help="exclude BN weights/biases and all biases from weight decay")
    betas: list = setting(factory=lambda: [0.9, 0.999], range=(0, 1, True, False), length=2, help="adam/adamw")
    muon_lr: float = setting(0.24, range=(0, None, False), help="muon: the filters' learning rate (the update is "
                             "orthogonalised, so this does not scale with the batch or the loss); schedule as lr's")
    muon_momentum: float = setting(0.6, range=(0, 1, True, False), help="muon: Nesterov momentum of the filters")
    muon_ns_steps: int = setting(3, range=(1, 10), help="muon: Newton-Schulz iterations per step")
    bias_lr: float = setting(0.0, range=(0, None), help="peak lr of BN parameters and biases (ndim <= 1); "
                             "0 = optim.lr")


@dataclass
class ScheduleConfig:
    name: Literal["constant", "multistep", "cosine", "onecycle"] = setting("cosine", help="how the learning "
                                                                           "rate changes over the run")
    unit: Literal["epoch", "iter"] = setting("epoch", help="unit of milestones and warmup")
    milestones: list = setting(factory=list, range=(0, None), increasing=True, help="multistep: epochs (or "
                               "iterations) where the lr is multiplied by gamma")
    gamma: float = setting(0.1, range=(0, None, False), help="multistep: lr factor at each milestone")
    warmup: float = setting(0, range=(0, None), help="linear warm-up length (in `unit`)")
    pct_start: float = setting(0.25, range=(0, 1, True, False), help="onecycle: fraction of training spent rising "
                               "to the peak")
    final_lr_frac: float = setting(0.0, range=(0, 1), help="cosine/onecycle: lr at the end as a fraction of the peak")


@dataclass
class DistillConfig:
    teacher: str | None = setting(None, help="knowledge distillation from this resnetlab checkpoint (same "
                                  "classes); None: off")
    alpha: float = setting(0.5, range=(0, 1), help="loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || "
                           "student) at temperature T")
    temperature: float = setting(4.0, range=(0, 100, False), help="softening of both distributions (T)")


@dataclass
class EarlyStopConfig:
    patience: int = setting(0, range=(0, None), resume=True, help="epochs without improvement before stopping; "
                            "0 = off")
    min_delta: float = setting(0.0, range=(0, None), resume=True, help="smallest change that counts as an "
                               "improvement")
    metric: Literal["val_top1", "val_top5", "val_loss"] = setting("val_top1", help="the validation figure "
                                                                  "watched (loss: lower is better)")


@dataclass
class TrainConfig:
    epochs: int = setting(30, range=(1, None), resume=True, help="passes over the training split (two-stage "
                          "fine-tuning: stage 2's, after finetune.stage1_epochs)")
    max_steps: int = setting(0, range=(0, None), resume=True, help="stop after this many iterations (the paper "
                             "counts 64k); 0 = off")
    batch_size: int = setting(128, range=(1, None), help="images per step (the global batch under torchrun)")
    eval_batch_size: int = setting(1000, range=(1, None), resume=True, help="images per evaluation batch, "
                                   "lowered to fit the memory at the input size")
    label_smoothing: float = setting(0.0, range=(0, 1, True, False), help="share of the target spread over all "
                                     "classes")
    class_weights: Literal["none", "balanced"] = setting("none", help="balanced: the loss weighs class c by N / "
                                                         "(C * N_c) of the training split (imbalanced folders)")
    ema_decay: float = setting(0.0, range=(0, 1, True, False), help="0 = no EMA; else evaluate and save the EMA "
                               "weights")
    lookahead_every: int = setting(0, range=(0, None), help="0 = off; else Lookahead with airbench's rising pull "
                                   "every N steps")
    lookahead_decay: float = setting(0.95, range=(0, 1), help="per-step decay of the Lookahead pull (d = "
                                     "decay**N * progress**3)")
    grad_clip: float = setting(0.0, range=(0, None), resume=True, help="clip the gradient norm; 0 = off")
    seed: int = setting(0, range=(0, 2**63 - 1), help="initialisation, data order and augmentation")
    deterministic: bool = setting(False, help="deterministic kernels only (slower on GPUs)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting("auto", help="auto: bf16 where the device has "
                                                                  "native bf16, else fp32")
    channels_last: Literal["auto", "true", "false"] = setting("auto", help="NHWC memory layout; auto: on CPUs and "
                                                               "CUDA (measured faster or equal)")
    compile: bool = setting(False, help="torch.compile the model")
    device: str = setting("auto", resume=True, help="auto | cpu | cuda | cuda:N | mps")
    tta: bool = setting(False, resume=True, help="flips (+ tta_shift's moved views) for the final test; "
                        "per-epoch eval stays plain")
    tta_shift: int = setting(0, range=(0, 8), resume=True, help="with tta: also the two views moved by ±N pixels "
                             "(6 views in all)")
    eval_every: int = setting(1, range=(1, None), resume=True, help="monitoring on test (no val split): every N "
                              "epochs and after the last")
    log_every: int = setting(50, range=(1, None), resume=True, help="steps between progress-bar figures")
    mlflow: str = setting("", resume=True, help="also log to MLflow (pip install 'resnetlab[mlflow]'): local (an "
                          "SQLite store, mlflow.db beside the run folder) or a tracking URI; '' = off")
    checkpoint_every_min: float = setting(0, range=(0, None), resume=True, help="also write last.safetensors every "
                                          "N minutes mid-epoch (exact resume); 0 = off")
    sync_bn: bool = setting(False, help="distributed runs: BatchNorm statistics over the whole global batch")
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class FinetuneConfig:
    strategy: Literal["linear-probe", "partial", "full", "two-stage"] = setting("two-stage", help="what trains: "
                                                                "the head, the last stages, everything, or the "
                                                                "head then everything")
    unfreeze_stages: int = setting(1, range=(1, None), help="partial: how many of the last stages train (with the "
                                   "head)")
    stage1_epochs: int = setting(5, range=(1, None), help="two-stage: head-only epochs (stops earlier on early "
                                 "stopping)")
    stage2_lr_mult: float = setting(0.5, range=(0, None, False), help="two-stage: stage-2 learning rate relative "
                                    "to optim.lr")
    freeze_bn_stats: bool = setting(False, help="two-stage stage 2 / partial / full: keep BN running stats frozen")
    layer_decay: float = setting(1.0, range=(0, 1, False), help="discriminative lr: stage k of K gets lr * "
                                 "decay**(K-k); 1 = off")
    compare: bool = setting(True, help="also report a linear probe of the pretrained net (before/after)")
    cached_features: bool = setting(True, help="head-only training (linear probe, two-stage stage 1) on the "
                                    "frozen backbone's pooled features, computed once per run")
    feature_views: int = setting(1, range=(1, 64), help="... of each training image: 1 = as stored, K > 1 adds "
                                 "K-1 augmented views")


@dataclass
class Recipe:
    name: str = setting("custom", help="the run's default folder name: runs/<name>")
    description: str = setting("", help="one line: what it trains, its headline figure and the machine measured on")
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


def flatten_recipe(d: dict, prefix: str = "") -> dict[str, Any]:
    """A recipe's plain dict as {dotted key: value} (model.kwargs stays one value: the model's arguments)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(flatten_recipe(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_keys(root: type | None = None) -> list[Key]:
    """Every recipe key (dotted name, type, default, range, resume rule, help), in recipe order. root: the recipe
    class (Recipe)."""
    return keys_of(root or Recipe)


def recipe_key(name: str, root: type | None = None) -> Key:
    """The declaration of one dotted recipe key; a UserError for a name that is not a key (or is a section)."""
    for key in recipe_keys(root):
        if key.name == name:
            return key
    if any(k.name.startswith(name + ".") for k in recipe_keys(root)):
        raise UserError(f"{name!r} is a section, not a value; name one of its keys")
    raise UserError(f"unknown recipe key {name!r}; see `resnetlab recipes keys`")


def resume_keys(root: type | None = None) -> list[str]:
    """The keys a resumed run may change (declared with resume=True)."""
    return [k.name for k in recipe_keys(root) if k.resume]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    allowed = choices(typ)
    if allowed and value not in allowed and not (isinstance(value, bool) and "true" in allowed):
        raise UserError(f"recipe key {key}: {value!r} is not allowed; choose one of {', '.join(allowed)}")
    try:
        return conform(value, typ, lenient=True)
    except Mismatch as e:
        raise UserError(f"recipe key {key}: {e}, got {shown(value)}") from None


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


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _get(r: Recipe, key: str) -> Any:
    node: Any = r
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(r: Recipe) -> None:
    """Every value in range, and the combinations that cannot work refused, so a
    bad recipe fails in a second rather than after an epoch."""
    for key in recipe_keys(type(r)):
        v = _get(r, key.name)
        problem = key.problem(v)
        if problem:
            raise UserError(f"recipe key {key.name}: {problem}, got {shown(list(v) if isinstance(v, tuple) else v)}")
    if not NAME_PATTERN.fullmatch(r.name) or r.name in (".", ".."):
        raise UserError(f"recipe key name: {r.name!r} is not a plain run name (letters, digits, '-', '_', '.'; "
                        f"at most 100); choose another place with --out instead")
    if r.schedule.name == "multistep" and not r.schedule.milestones:
        raise UserError("recipe key schedule.milestones: multistep needs a non-empty list of milestones")
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
