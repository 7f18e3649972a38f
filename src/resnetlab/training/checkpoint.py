"""Checkpoints: one safetensors file each, written atomically (temp file + os.replace).

A file holds the model weights under their state_dict names, resnetlab metadata (architecture, class
names, normalisation, input size, recipe, metrics) as JSON in the safetensors header, and — for
`last.safetensors` — the resume state: optimizer / EMA tensors under `_resume/…` names and the scalar
state (epoch, step, RNG, history) as JSON. One file means one rename, so a kill at any moment leaves
either the previous or the new checkpoint, never a mix.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..errors import UserError

RESUME_PREFIX = "_resume/"


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                    resume: dict[str, Any] | None = None,
                    resume_tensors: dict[str, torch.Tensor] | None = None) -> None:
    tensors = dict(state_dict)
    metadata = {"format": "pt", "resnetlab": json.dumps(meta)}
    if resume is not None:
        metadata["resume"] = json.dumps(resume)
        tensors.update({RESUME_PREFIX + k: v for k, v in (resume_tensors or {}).items()})
    atomic_save(tensors, path, metadata)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, resnetlab metadata) of a checkpoint; resume entries are left out."""
    weights, meta, _, _ = read_full(path)
    return weights, meta


def read_full(path: str | Path) -> tuple[dict, dict, dict | None, dict]:
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                p = p / name
                break
    if not p.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable safetensors checkpoint ({e})") from None
    meta = json.loads(header["resnetlab"]) if "resnetlab" in header else {}
    resume = json.loads(header["resume"]) if "resume" in header else None
    weights = {k: v for k, v in tensors.items() if not k.startswith(RESUME_PREFIX)}
    extra = {k[len(RESUME_PREFIX):]: v for k, v in tensors.items() if k.startswith(RESUME_PREFIX)}
    return weights, meta, resume, extra


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split an optimizer state_dict into JSON-able scalars and named tensors."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def optimizer_from_flat(opt: torch.optim.Optimizer, info: dict, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = val
    for idx, st in info["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
