"""The checkpoint schema: what a resnetlab checkpoint's metadata may hold, checked as data, and
`load_model`, which rebuilds a trained model from it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..decoding import RESIZE_MODES
from ..weights import read_checkpoint
from .registry import build_model, check_num_classes, get_spec, validate_model_args


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
    check_num_classes(meta.get("num_classes"))
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
