"""The checkpoint schema: `CheckpointMeta`, what a resnetlab checkpoint (or an exported model) says about itself,
read and written here only and checked as data; and `load_model`, which rebuilds a trained model from it."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..decoding import RESIZE_MODES, ResizePolicy
from ..errors import UserError
from ..schema import Mismatch, conform, finite
from ..weights import read_checkpoint, read_metadata
from .registry import build_model, check_num_classes, get_spec, validate_model_args

Task = Literal["classification"]  # what a checkpoint's model does; detection and segmentation come next
TASKS: tuple[str, ...] = Task.__args__


@dataclass(frozen=True)
class Resize:
    """How a file becomes the model's input: decoded (PIL) to decode_size — the size of the images the model was
    trained on — by `mode`, then normalised and resized to input_size by the training code itself."""
    decode_size: int
    mode: str = "squash"


@dataclass(frozen=True)
class DatasetRef:
    """Where a run's data came from, so eval and resume find the same splits again."""
    dataset: str | None = None
    path: str | None = None          # a folder, manifest, shards or URL (folder datasets)
    data_dir: str | None = None      # the data root as resolved at the time (CIFAR)
    val_size: float | None = None
    split_seed: int | None = None
    test_fraction: float | None = None
    split: str | None = None         # how folder splits were drawn (runner.FOLDER_SPLIT)


@dataclass
class CheckpointMeta:
    """A checkpoint's metadata. `from_dict` is the one reader (every field checked, one line naming the file and
    the key) and `to_dict` the one writer; everything else reads attributes."""
    arch: str
    num_classes: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    input_size: int
    kwargs: dict = field(default_factory=dict)
    task: Task = "classification"
    resize: Resize | None = None     # None: decoded straight to input_size, squashed
    recipe: dict | None = None       # the resolved recipe (training.config.recipe_from_dict reads it)
    dataset: DatasetRef | None = None
    metrics: dict = field(default_factory=dict)
    epoch: int | None = None
    step: int | None = None
    finetuned_from: str | None = None
    format_version: int | None = None
    quantization: dict | None = None  # int8 exports: how the graph was quantized

    @property
    def policy(self) -> ResizePolicy:
        """The decoding policy of files given to this model."""
        r = self.resize
        return ResizePolicy(r.decode_size if r else self.input_size, r.mode if r else "squash")

    @property
    def data_ref(self) -> DatasetRef:
        return self.dataset or DatasetRef()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what the file's header holds); None fields are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: Any) -> "CheckpointMeta":
        return dataclasses.replace(self, **changes)

    def to_deploy_json(self) -> str:
        """What an exported graph carries: this metadata and, for other tools, its input and output in words."""
        return json.dumps(dict(self.to_dict(), **DEPLOY_NOTES))

    @classmethod
    def from_deploy_json(cls, text: str, path: str | Path) -> "CheckpointMeta":
        """The metadata an exported graph carries (see to_deploy_json), checked as a checkpoint's."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path}: resnetlab metadata is not valid JSON ({str(e).splitlines()[0][:80]})") from None
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in DEPLOY_NOTES}
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path) -> "CheckpointMeta":
        """Checked metadata from plain data (a header's JSON): known keys only, each of the right type and range."""
        if not isinstance(data, dict):
            raise UserError(f"{path}: checkpoint metadata is not a mapping")
        unknown = sorted(set(map(str, data)) - set(FIELDS))
        if unknown:
            raise UserError(f"{path}: unknown checkpoint metadata key(s) {', '.join(unknown)}; not a checkpoint "
                            f"written by resnetlab")
        if "arch" not in data:
            raise UserError(f"{path}: not a resnetlab checkpoint (no architecture metadata)")
        get_spec(data["arch"])
        kwargs = validate_model_args(data["arch"], data.get("kwargs") or {}, where=f"{path}: kwargs")
        n = check_num_classes(data.get("num_classes"))
        classes = data.get("classes")
        if not (isinstance(classes, list) and len(classes) == n and all(isinstance(c, str) for c in classes)):
            raise UserError(f"{path}: metadata 'classes' must be a list of {n} names")
        for key in ("mean", "std"):
            v = data.get(key)
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                  and finite(x) for x in v)):
                raise UserError(f"{path}: metadata {key!r} must be a list of 3 finite numbers")
        if any(x <= 0 for x in data["std"]):
            raise UserError(f"{path}: metadata 'std' must be positive")
        size = data.get("input_size")
        if not (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096):
            raise UserError(f"{path}: metadata 'input_size' must be an integer between 8 and 4096")
        task = data.get("task", "classification")
        if task not in TASKS:
            raise UserError(f"{path}: metadata 'task' must be one of {', '.join(TASKS)}, got {str(task)[:40]!r}")
        rest = {k: _checked(k, data.get(k), path) for k in ("recipe", "metrics", "epoch", "step", "finetuned_from",
                                                             "format_version", "quantization")}
        rest["metrics"] = rest["metrics"] or {}
        return cls(arch=data["arch"], num_classes=n, classes=list(classes), mean=list(data["mean"]),
                   std=list(data["std"]), input_size=size, kwargs=kwargs, task=task,
                   resize=_resize(data.get("resize"), path), dataset=_dataset(data.get("dataset"), path), **rest)


DEPLOY_NOTES = {"input": "float32 (N, 3, S, S): pixels/255, minus mean, divided by std (per channel, RGB)",
                "output": "logits (N, num_classes); softmax for probabilities"}
FIELDS = tuple(f.name for f in dataclasses.fields(CheckpointMeta))
HINTS = typing.get_type_hints(CheckpointMeta)


def _checked(key: str, value: Any, path: str | Path) -> Any:
    """A plain field, checked by its annotation (dict, int | None, str | None ...)."""
    if value is None:
        return None
    try:
        value = conform(value, HINTS[key])
    except Mismatch as e:
        raise UserError(f"{path}: metadata {key!r}: {e}, got {type(value).__name__}") from None
    if isinstance(value, int) and value < 0:
        raise UserError(f"{path}: metadata {key!r} must not be negative")
    return value


def _resize(value: Any, path: str | Path) -> Resize | None:
    if value is None:
        return None
    ds = value.get("decode_size", 32) if isinstance(value, dict) else None
    if not (isinstance(value, dict) and set(value) <= {"decode_size", "mode"} and value.get("mode", "squash") in
            RESIZE_MODES and isinstance(ds, int) and not isinstance(ds, bool) and 8 <= ds <= 4096):
        raise UserError(f"{path}: metadata 'resize' must be {{mode: {' | '.join(RESIZE_MODES)}, decode_size: "
                        f"8..4096}}")
    return Resize(ds, value.get("mode", "squash"))


def _dataset(value: Any, path: str | Path) -> DatasetRef | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UserError(f"{path}: metadata 'dataset' must be a mapping")
    known = typing.get_type_hints(DatasetRef)
    unknown = sorted(set(map(str, value)) - set(known))
    if unknown:
        raise UserError(f"{path}: metadata 'dataset' has unknown key(s) {', '.join(unknown)}")
    for key, v in value.items():
        try:
            conform(v, known[key])  # checked, kept as written (val_size 100 is a count, 0.1 a fraction)
        except Mismatch as e:
            raise UserError(f"{path}: metadata 'dataset.{key}': {e}") from None
    return DatasetRef(**value)


def read_meta(path: str | Path) -> CheckpointMeta:
    """A checkpoint's checked metadata from its header alone (no tensors read)."""
    return CheckpointMeta.from_dict(read_metadata(path), path)


def load_model(path: str | Path, device: torch.device | str = "cpu", features_only: bool = False,
               out_indices: Sequence[int] | None = None,
               output_stride: int | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a trained model from a resnetlab checkpoint: (model in eval mode, metadata); with
    features_only, its backbones.FeatureExtractor (see create_model)."""
    weights, data = read_checkpoint(path)
    meta = CheckpointMeta.from_dict(data, path)
    model = build_model(meta.arch, meta.num_classes, meta.kwargs, where=f"{path}: kwargs")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match {meta.arch} ({str(e).splitlines()[0]})") from None
    if features_only:
        from .backbones import FeatureExtractor
        model = FeatureExtractor(model, out_indices, output_stride)
    return model.to(device).eval(), meta
