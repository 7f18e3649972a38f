"""From a recipe to a finished run: data → model → Trainer.fit → test evaluation → results.json.

Also rebuilds the data of a checkpoint from its metadata (for `eval` and fine-tuning).
"""
from __future__ import annotations

import contextlib

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import (AugmentConfig, BatchLoader, ImageSet, channel_stats, load_cifar_splits, load_image_folder,
                    resolve_data_root)
from ..data.folders import stratified_split, subset
from ..errors import UserError
from ..evaluation.metrics import evaluate
from ..evaluation.profile import count_params
from ..evaluation.report import write_confusion
from ..files import atomic_write_text
from ..models import build_model, natural_input_size
from ..preprocessing import normalize
from ..runtime import (barrier, broadcast_flag, broadcast_module, broadcast_str, describe_device, dist_context,
                       init_distributed,
                       refuse_distributed_launch, seed_and_backends, select_device,
                       select_precision, use_channels_last)
from ..weights import read_checkpoint, read_metadata, save_checkpoint
from .config import DataConfig, Recipe, load_recipe, recipe_from_dict
from .engine import Trainer
from .rundir import claim, next_run_dir


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def load_splits(cfg: DataConfig, data_dir: str | None, progress: bool = True,
                mean_std: tuple | None = None, log=print) -> Splits:
    """Train / validation / test ImageSets for a data config; mean/std from the training split
    unless given (pretrained weights bring their own normalisation)."""
    if cfg.dataset == "folder":
        train, test = load_image_folder(cfg.path, size=cfg.image_size or 32, split=cfg.test_fraction,
                                        seed=cfg.split_seed, strict=cfg.strict, progress=progress)
    else:
        train, test = load_cifar_splits(data_dir, cfg.dataset, cfg.verify, download_missing=True, log=log)
    if cfg.subset:
        train = _slice(train, cfg.subset, cfg.split_seed)
        test = _slice(test, max(cfg.subset // 5, len(test.classes)), cfg.split_seed)
    val = None
    if cfg.val_size:
        frac = cfg.val_size / len(train) if cfg.val_size >= 1 else cfg.val_size
        if not 0 < frac < 1:
            raise UserError(f"recipe key data.val_size: {cfg.val_size} leaves no training images "
                            f"(training split has {len(train)})")
        keep, held = stratified_split(train.labels, frac, cfg.split_seed)
        train, val = subset(train, keep), subset(train, held)
    mean, std = mean_std if mean_std else channel_stats(train.images)
    return Splits(train, val, test, tuple(mean), tuple(std))


def _slice(ds: ImageSet, n: int, seed: int) -> ImageSet:
    if n >= len(ds):
        return ds
    _, held = stratified_split(ds.labels, n / len(ds), seed)
    return subset(ds, held)


def make_loaders(recipe: Recipe, splits: Splits, device: torch.device, channels_last: bool,
                 input_size: int | None = None) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    a = recipe.data.augment
    t = recipe.train
    # progressive resizing never reaches the last epoch: a short run (train.epochs=1 for a try) still
    # ends on full-size images, the size it is tested at
    aug = AugmentConfig(a.crop_padding, a.pad_mode, a.flip, a.cutout, a.jpeg, tuple(a.jpeg_quality), a.resample,
                        tuple(a.resample_scale), a.artifacts_from_epoch, flip_mode=a.flip_mode,
                        noise=a.noise, noise_std=tuple(a.noise_std),
                        epoch_sizes=tuple(a.epoch_sizes)[:max(t.epochs - 1, 0)])
    resize = input_size if input_size and input_size != splits.train.images.shape[-1] else None
    common = dict(mean=splits.mean, std=splits.std, device=device, channels_last=channels_last,
                  image_size=resize)
    ctx = dist_context()
    if ctx.enabled and t.batch_size % ctx.world_size:
        raise UserError(f"train.batch_size {t.batch_size} (the global batch) is not divisible by the "
                        f"{ctx.world_size} processes")
    common["shard"] = (ctx.rank, ctx.world_size)
    train = BatchLoader(splits.train, t.batch_size, train=True, augment=aug, seed=t.seed, **common)
    test = BatchLoader(splits.test, t.eval_batch_size, **common)
    val = BatchLoader(splits.val, t.eval_batch_size, **common) if splits.val is not None else test
    return train, val, test


def model_meta(name: str, kwargs: dict, classes: list[str], mean, std, input_size: int,
               recipe: Recipe | None, decode_size: int | None = None, **extra: Any) -> dict[str, Any]:
    """What a checkpoint needs to be used on its own. `resize` is the preprocessing policy: a file is decoded
    (PIL, squash) to decode_size — the size of the images the model was trained on — then normalised and
    resized to input_size by the same tensor code as in training (resnetlab.preprocessing.model_input)."""
    resize = {"mode": "squash", "decode_size": decode_size or input_size}
    return {"arch": name, "kwargs": kwargs, "num_classes": len(classes), "classes": list(classes),
            "mean": list(mean), "std": list(std), "input_size": input_size, "resize": resize,
            "recipe": recipe.to_dict() if recipe else None, **extra}


def setup_runtime(recipe: Recipe, distributed: bool = False) -> tuple[torch.device, torch.dtype | None, bool]:
    """(device, autocast dtype or None, channels_last) for a recipe; seeds torch. distributed: join the
    torchrun job this process was launched in (train, finetune); other commands refuse a multi-process
    launch."""
    t = recipe.train
    if distributed:
        _, device = init_distributed(t.device)
    else:
        refuse_distributed_launch("this command")
        device = select_device(t.device)
    seed_and_backends(t.seed, device, t.deterministic)
    return device, select_precision(t.precision, device), use_channels_last(t.channels_last, device)


# Keys a resumed run may change: they extend or rescue a run without making it a different experiment
# (e.g. train.epochs to train longer, optim.lr after a divergence, the device it runs on).
RESUME_SAFE = ("train.epochs", "train.max_steps", "optim.lr", "train.device", "train.log_every",
               "train.checkpoint_every_min", "train.tta", "train.tta_shift", "train.eval_every", "train.eval_batch_size", "train.grad_clip",
               "data.verify", "data.strict", "train.early_stopping.patience", "train.early_stopping.min_delta")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_plan(run_dir: Path, data_dir: str | None, overrides: list[str]) -> tuple[Recipe, str | None]:
    """The recipe and data root to continue run_dir with: the stored ones, with safe overrides applied
    and any other change refused with one line."""
    last = run_dir / "last.safetensors"
    if not last.is_file():
        raise UserError(f"{run_dir}: nothing to resume (no last.safetensors)")
    meta = read_metadata(last)  # the tensors are read once, by the trainer
    if not meta.get("recipe"):
        raise UserError(f"{last}: has no recipe; not a resnetlab run")
    stored = recipe_from_dict(meta["recipe"])
    recipe = load_recipe(None, list(overrides), base=stored.to_dict()) if overrides else stored
    before, after = _flatten(stored.to_dict()), _flatten(recipe.to_dict())
    changed = [k for k in after if after[k] != before.get(k)]
    refused = [k for k in changed if k not in RESUME_SAFE]
    if refused:
        raise UserError(f"recipe key {refused[0]} cannot change when resuming (it would make a different "
                        f"experiment); allowed on --resume: {', '.join(RESUME_SAFE)}")
    stored_root = (meta.get("dataset") or {}).get("data_dir")
    return recipe, data_dir or stored_root


def train_recipe(recipe: Recipe | None, out: str | Path | None, data_dir: str | None = None, resume: bool = False,
                 progress: bool = True, log=print, overrides: list[str] = (), on_epoch=None) -> dict[str, Any]:
    """Run a whole training recipe; returns the results dict also written to results.json.

    out None: runs/<recipe name> (or -2, -3, … when taken), chosen by rank 0 in a distributed run.
    Order matters for users: everything that can be refused (recipe, model, device, run folder) is
    checked before data is loaded, and the run folder is created only once the data is there."""
    if resume:
        assert out is not None
        recipe, data_dir = resume_plan(Path(out), data_dir, list(overrides))
    assert recipe is not None
    device, amp, cl = setup_runtime(recipe, distributed=True)
    ctx = dist_context()
    if not ctx.is_main:
        log = quiet  # one voice: rank 0 logs and writes; the others compute
    if out is None:
        out = broadcast_str(str(next_run_dir(Path("runs") / recipe.name)) if ctx.is_main else "")
    run_dir = Path(out)
    if not resume and (run_dir / "last.safetensors").exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
    check_out_dir(run_dir)
    if ctx.enabled:
        log(f"distributed: {ctx.describe()}, global batch {recipe.train.batch_size} = "
            f"{recipe.train.batch_size // ctx.world_size} per process, sync_bn {recipe.train.sync_bn}")
    m = recipe.model
    build_model(m.name, 2, m.kwargs)  # fail in a second on a model that cannot be built, before any data work
    t_load = time.perf_counter()
    splits = load_splits(recipe.data, data_dir, progress and ctx.is_main, log=log)
    log(f"data: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
        f"{len(splits.test)} test images, {len(splits.classes)} classes, mean {splits.mean} std "
        f"{splits.std} ({time.perf_counter() - t_load:.1f}s)")
    if splits.val is None:
        log("no validation split (data.val_size=0): per-epoch figures are on the test split, for monitoring "
            "only; nothing is selected or stopped on them")
    torch.manual_seed(recipe.train.seed)
    model = build_model(m.name, len(splits.classes), m.kwargs)
    input_size = recipe.data.image_size or natural_input_size(m.name, **m.kwargs)
    if recipe.data.dataset != "folder" and recipe.data.image_size is None:
        input_size = 32
    train_l, val_l, test_l = make_loaders(recipe, splits, device, cl, input_size)
    if hasattr(model, "init_whitening") and not resume:
        # data-dependent init of a fixed whitening layer, from (unaugmented) training images
        sample = splits.train.images[torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(
            recipe.train.seed))[:5000]]
        model.init_whitening(normalize(sample, torch.tensor(splits.mean), torch.tensor(splits.std)))
    meta = model_meta(m.name, m.kwargs, splits.classes, splits.mean, splits.std, input_size, recipe,
                      decode_size=splits.train.images.shape[-1], dataset=data_ref(recipe.data, data_dir))
    log(f"model: {m.name} {m.kwargs or ''} {count_params(model):,} params; device {describe_device(device, amp)}"
        f"{', channels_last' if cl else ''}")
    with claim(run_dir, log) if ctx.is_main else contextlib.nullcontext():
        if not resume and ctx.is_main and (run_dir / "last.safetensors").exists():  # another run finished here
            raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
        trainer = Trainer(model, recipe, train_l, val_l, run_dir, meta, device, amp, cl, progress=progress,
                          log=log, monitor_only=splits.val is None, on_epoch=on_epoch)
        state = trainer.fit(resume=resume)
        results = finish_run(trainer, splits, test_l, state, log)
    log(f"run folder: {run_dir}")
    return results


def quiet(*args: Any, **kwargs: Any) -> None:
    """A log that says nothing (ranks other than 0; tune's trials)."""


def check_out_dir(run_dir: Path) -> None:
    """Refuse, before any work, an output folder that cannot be created: under a file, or not writable."""
    p = run_dir
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UserError(f"{run_dir}: {p} is a file, so the run folder cannot be created there; choose another --out")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{run_dir}: {p} is not writable; choose another --out")


def finish_run(trainer: Trainer, splits: Splits, test_loader, state: dict, log=print) -> dict[str, Any]:
    """Test the chosen weights and record results: best-on-validation when a validation split exists
    (choosing on test would be cheating), else the final weights."""
    run_dir, prefix = trainer.run_dir, trainer.prefix
    # rank 0 decides and holds the file; the others get its weights (no shared file system needed)
    if broadcast_flag(splits.val is not None and (run_dir / f"{prefix}best.safetensors").is_file()):
        if dist_context().is_main:
            weights, _ = read_checkpoint(run_dir / f"{prefix}best.safetensors")
            trainer.eval_model.load_state_dict(weights)
        broadcast_module(trainer.eval_model)
        chosen = f"best on validation (epoch {state['best_epoch']})"
    else:
        chosen = "final"
    if chosen == "final" and splits.val is None and not trainer.recipe.train.tta and trainer.last_val is not None:
        test = trainer.last_val  # the last epoch already evaluated these weights on the test split
    else:
        test = evaluate(trainer.eval_model, test_loader, trainer.num_classes, tta=trainer.recipe.train.tta,
                        amp_dtype=trainer.amp_dtype, tta_shift=trainer.recipe.train.tta_shift)
    if not dist_context().is_main:  # rank 0 writes the results; the others took part in the evaluation
        barrier()
        return {"test": test.summary()}
    hist = state["history"]
    speeds = [h["img_per_s"] for h in hist[1:]] or [h["img_per_s"] for h in hist]
    model = trainer.eval_model
    results = {
        "model": trainer.meta["arch"], "test": test.summary(), "weights": chosen,
        "params": count_params(model), "macs": trainer.forward_macs(trainer.meta["input_size"]),
        "train_time_min": state["elapsed"] / 60,
        "train_pflop": hist[-1]["train_pflop"] if hist else 0.0, "epochs": state["epoch"], "steps": state["step"],
        "img_per_s": sum(speeds) / max(1, len(speeds)), "device": describe_device(trainer.device, trainer.amp_dtype),
        "stopped": state["stopped"], "per_class": dict(zip(splits.classes, test.per_class())),
    }
    meta = dict(trainer.meta, metrics={"test": test.summary(), "val_best": state["best"]},
                epoch=state["epoch"], step=state["step"])
    save_checkpoint(run_dir / f"{prefix}best.safetensors", model.state_dict(), meta)
    atomic_write_text(run_dir / f"{prefix}results.json", json.dumps(results, indent=2))
    write_confusion(test, splits.classes, run_dir / f"{prefix}confusion")
    log(f"test ({chosen} weights): top-1 {test.top1:.4f}  top-5 {test.top5:.4f}  loss {test.loss:.4f}  "
        f"[{state['elapsed'] / 60:.1f} min training, {results['train_pflop']:.3f} PFLOP]")
    barrier()
    return results


def data_ref(cfg: DataConfig, data_dir: str | None) -> dict:
    """Where the data came from, so eval and resume find it again (absolute paths; the data root as
    resolved at the time: --data-dir, $RESNETLAB_DATA or ./data)."""
    root = str(resolve_data_root(data_dir).resolve()) if cfg.dataset != "folder" else None
    path = str(Path(cfg.path).resolve()) if cfg.path else None
    return {"dataset": cfg.dataset, "path": path, "data_dir": root,
            "val_size": cfg.val_size, "split_seed": cfg.split_seed, "test_fraction": cfg.test_fraction}
