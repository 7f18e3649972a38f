"""Weights and checkpoints as files: the one module that reads and writes them.

- resnetlab checkpoints: one safetensors file with the weights under their state_dict names, resnetlab
  metadata (architecture, kwargs, classes, normalisation, input size, recipe, metrics) as JSON in the
  header, and — for `last.safetensors` — the resume state (optimizer/EMA/RNG tensors under `_resume/…`,
  scalars as JSON). Written atomically: a kill leaves the previous or the new file, never a mix.
- torchvision-format state_dicts (.pth/.pt), read with torch.load(weights_only=True): never unpickled.
- torchvision's published ImageNet weights (`torchvision:resnet50`), located through torchvision's own
  weight registry and downloaded with a digest check.

It knows no model class: loading into a model goes through the model's `get_classifier()` only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .download import fetch, file_digest
from .errors import UserError
from .files import atomic_write

RESUME_PREFIX = "_resume/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                    resume: dict[str, Any] | None = None,
                    resume_tensors: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {"format": "pt", "resnetlab": json.dumps(meta)}
    if resume is not None:
        metadata["resume"] = json.dumps(resume)
        tensors.update({RESUME_PREFIX + k: v.detach().contiguous().cpu() for k, v in (resume_tensors or {}).items()})
    try:
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except SafetensorError as e:  # e.g. the disk filled up while writing: an error of the environment
        raise OSError(f"cannot write {path} ({e})") from None


def _summary_checkpoint(run_dir: Path) -> str | None:
    """The file name a fine-tuning run's summary.json gives as its final checkpoint, if any."""
    try:
        name = json.loads((run_dir / "summary.json").read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(name).name if isinstance(name, str) else None  # a name inside the folder, never a path out of it


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder: its best, else its last checkpoint; for a fine-tuning run, the final
    stage's checkpoint that its summary.json names."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        final = _summary_checkpoint(p)
        if final is not None and (p / final).is_file():
            return p / final
        raise UserError(f"{p}: run folder has no best.safetensors or last.safetensors, nor a summary.json naming "
                        f"its checkpoint")
    if not p.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        raise UserError(f"{p}: a PyTorch weights file, not a resnetlab checkpoint (.safetensors with metadata: the "
                        f"classes and preprocessing it needs); use it with `resnetlab finetune --weights {p}`")
    return p


def _read_header(p: Path) -> tuple[dict[str, Any], dict | None]:
    """(resnetlab metadata, resume scalars or None) from the safetensors header alone."""
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable safetensors checkpoint ({e})") from None
    try:
        meta = json.loads(header["resnetlab"]) if "resnetlab" in header else {}
        resume = json.loads(header["resume"]) if "resume" in header else None
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: checkpoint metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{p}: checkpoint metadata is nested too deeply; not a checkpoint written by resnetlab") \
            from None
    if not isinstance(meta, dict):
        raise UserError(f"{p}: checkpoint metadata is not a mapping")
    return meta, resume


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A checkpoint's resnetlab metadata without loading its tensors."""
    return _read_header(resolve_checkpoint(path))[0]


def read_full(path: str | Path) -> tuple[dict, dict, dict | None, dict]:
    """(weights, metadata, resume scalars or None, resume tensors) of a checkpoint."""
    p = resolve_checkpoint(path)
    meta, resume = _read_header(p)
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable safetensors checkpoint ({e})") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(RESUME_PREFIX)}
    extra = {k[len(RESUME_PREFIX):]: v for k, v in tensors.items() if k.startswith(RESUME_PREFIX)}
    return weights, meta, resume, extra


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, resnetlab metadata) of a checkpoint; resume entries are left out."""
    weights, meta, _, _ = read_full(path)
    return weights, meta


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


# ------------------------------------------------------------------------------ torchvision weights
def cache_dir() -> Path:
    return Path(os.environ.get("RESNETLAB_CACHE", Path.home() / ".cache" / "resnetlab"))


def torchvision_weight_entry(name: str):
    """torchvision's IMAGENET1K_V1 entry for a ResNet-family model (url, metadata), from its own registry."""
    if name not in TORCHVISION_NAMES:
        raise UserError(f"no torchvision weights for {name!r}; choose one of {', '.join(TORCHVISION_NAMES)}")
    from torchvision.models import get_model_weights
    return get_model_weights(name).IMAGENET1K_V1


def fetch_torchvision_weights(name: str, url: str | None = None, progress: bool = True) -> Path:
    """Download (once) torchvision's published weights for `name` into the cache and verify them.

    torchvision publishes the first 8 hex digits of each file's SHA-256 in its name (what
    torch.hub's check_hash compares) and the file size, not the full digest. So: the prefix is checked
    on download; the full SHA-256 of the verified file is recorded beside it, and every later load
    re-hashes the cached file against that record (a cached file that changed is refused).
    """
    entry = torchvision_weight_entry(name)
    fname = entry.url.rsplit("/", 1)[1]
    prefix = fname.rsplit("-", 1)[1].split(".")[0]
    target = cache_dir() / fname
    record = target.with_name(target.name + ".sha256")
    if target.is_file() and record.is_file():
        if file_digest(target) != record.read_text().strip():
            raise UserError(f"{target}: cached weights changed since they were verified; delete the file and "
                            f"its .sha256 record to download again")
        return target
    hint = "save the torchvision state_dict as a .pth file and pass --weights FILE.pth"
    # fetch checks the published prefix (also of a file already in the cache without a record)
    fetch(url or entry.url, target, digest=prefix, algo="sha256", progress=progress, offline_hint=hint)
    record.write_text(file_digest(target) + "\n")
    return target


# --------------------------------------------------------------------------------- any weight source
def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-format state_dict (.pth/.pt), read without unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is a bad file for the user
        raise UserError(f"{path}: cannot read as a weights-only state_dict ({str(e).splitlines()[0]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, resnetlab metadata or {}) from a .safetensors checkpoint, a .pth state_dict, or
    `torchvision:NAME` (its metadata: {"arch": NAME})."""
    src = str(source)
    if src.startswith("torchvision:"):
        name = src.split(":", 1)[1]
        sd = read_state_dict_file(fetch_torchvision_weights(name))
        return sd, {"arch": name}
    path = Path(src)
    if path.is_dir():  # a run folder stands for its final checkpoint, as for eval and predict
        path = resolve_checkpoint(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        return read_checkpoint(path)
    return read_state_dict_file(path), {}


def classifier_prefix(model: nn.Module) -> str:
    """The state_dict prefix of the model's classifier ("fc." for our ResNets), found by identity."""
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name + "."
    raise ValueError("get_classifier() returned a module that is not part of the model")


def load_backbone_weights(model: nn.Module, source: str | Path | dict, verbose: bool = True,
                          log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Load every tensor but a mismatched head; refuse, listing keys, when the backbone differs."""
    sd = source if isinstance(source, dict) else read_weights(source)[0]
    own = model.state_dict()
    head = classifier_prefix(model)

    def is_head(k: str) -> bool:
        return k.startswith(head)

    missing = [k for k in own if k not in sd and not is_head(k)]
    unexpected = [k for k in sd if k not in own and not is_head(k)]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and not is_head(k) and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = ([f"missing: {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}"] if missing else []) + \
                   ([f"unexpected: {', '.join(unexpected[:6])}{' …' if len(unexpected) > 6 else ''}"] if unexpected else []) + \
                   ([f"shape mismatch: {'; '.join(wrong[:4])}"] if wrong else [])
        raise UserError(f"weights do not match the {type(model).__name__} backbone ({' | '.join(problems)}); "
                        f"pick the architecture the weights were trained with")
    load = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    new = [k for k in own if k not in load]
    own.update(load)
    model.load_state_dict(own)
    if verbose:
        log(f"loaded {len(load)} tensors; newly initialised: {', '.join(new) if new else 'none'}")
    return {"loaded": list(load), "new": new}


def map_head(model: nn.Module, sd: dict[str, torch.Tensor], old: list[str] | None, new: list[str],
             log: Callable[[str], None] = print) -> int:
    """Continual use: keep the trained head rows of classes that are still there (by name); classes
    that are new keep their fresh rows. Returns how many rows were kept."""
    head, prefix = model.get_classifier(), classifier_prefix(model)
    if not old or prefix + "weight" not in sd:
        return 0
    keep = [(new.index(c), old.index(c)) for c in old if c in new]
    if not keep:
        return 0
    with torch.no_grad():
        for dst, src in keep:
            head.weight[dst] = sd[prefix + "weight"][src]
            if head.bias is not None and prefix + "bias" in sd:
                head.bias[dst] = sd[prefix + "bias"][src]
    log(f"head: kept {len(keep)} trained class rows, {len(new) - len(keep)} new class rows")
    return len(keep)
