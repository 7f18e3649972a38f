"""Fine-tuning: pretrained weights → new head → freeze policy → one or two stages, all trained by
training.engine.Trainer (the same loop as `resnetlab train`).

Weight sources (read by resnetlab.weights): a resnetlab checkpoint (.safetensors with metadata), a
torchvision-format state_dict (.pth, weights only), or `torchvision:<name>` for torchvision's published
ImageNet weights. Freeze policies live with the models (resnetlab.models.freeze).
"""
from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .evaluation.profile import count_params
from .evaluation.report import write_report
from .files import atomic_write_text
from .errors import UserError
from .models import CheckpointMeta, apply_strategy, build_model, read_meta, stage_lr_scales
from .runtime import dist_context
from .training.config import Recipe
from .training.engine import Stage, Trainer
from .training.features import FeatureLoader, PooledHead, compute_features, head_train_flops
from .training.rundir import claim, stage_checkpoints
from .training.runner import (PreparedRun, finish_run, interruptible, prepare_run, quiet, resume_plan,
                              write_recipe_file)
from .weights import (IMAGENET_MEAN, IMAGENET_STD, load_backbone_weights, map_head, read_weights,
                      resolve_checkpoint)


@dataclass
class Source:
    """The pretrained weights and what they say of themselves: architecture, its arguments, their classes."""
    weights: str
    state_dict: dict[str, torch.Tensor]
    arch: str
    kwargs: dict[str, Any]
    classes: list[str] | None
    mean_std: tuple | None = None    # the normalisation the weights were trained with, when known
    input_size: int | None = None    # ... and their input size

    def model(self, classes: list[str], log=quiet) -> tuple[nn.Module, dict[str, list[str]]]:
        """A new model for `classes` with these weights loaded (the head mapped class by class where the names
        match); the load report says what was loaded and what is new."""
        m = build_model(self.arch, len(classes), self.kwargs)
        report = load_backbone_weights(m, self.state_dict, verbose=log is not quiet, log=log)
        map_head(m, self.state_dict, self.classes, classes, log=log)
        return m, report


def read_source(weights: str, arch: str, kwargs: dict) -> Source:
    """What the weights say of themselves: a resnetlab checkpoint its (checked) metadata; torchvision's published
    weights their architecture, ImageNet normalisation and 224 px; a bare state_dict nothing (the recipe's model,
    or --arch, and ImageNet normalisation for .pth/.pt files)."""
    sd, raw = read_weights(weights)
    if str(weights).startswith("torchvision:"):
        return Source(str(weights), sd, raw["arch"], {}, None, (IMAGENET_MEAN, IMAGENET_STD), 224)
    path = Path(weights)
    path = (resolve_checkpoint(path) if path.is_dir() else path).resolve()  # recorded: resume finds it anywhere
    if raw:
        meta = CheckpointMeta.from_dict(raw, path)
        return Source(str(path), sd, meta.arch, meta.kwargs, meta.classes, (tuple(meta.mean), tuple(meta.std)),
                      meta.input_size)
    imagenet = path.suffix in (".pth", ".pt")
    return Source(str(path), sd, arch, dict(kwargs), None, (IMAGENET_MEAN, IMAGENET_STD) if imagenet else None)


def resume_finetune(run_dir: str | Path, data_dir: str | None = None, overrides: list[str] = (),
                    progress: bool = True, log=print, on_epoch=None) -> dict[str, Any]:
    """Continue an interrupted fine-tuning run exactly, from its newest stage checkpoint: stages that finished
    are not trained again (their results are recomputed from their checkpoints), the interrupted one continues
    mid-epoch, later ones run as they would have."""
    run_dir = Path(run_dir)
    kept = stage_checkpoints(run_dir)
    if not kept:
        hint = (f"; a training run: continue it with `resnetlab train --resume {run_dir}`"
                if (run_dir / "last.safetensors").is_file() else "")
        raise UserError(f"{run_dir}: no fine-tuning checkpoint (<stage>-last.safetensors) to resume{hint}")
    meta = read_meta(kept[-1])
    if not meta.finetuned_from:
        raise UserError(f"{kept[-1]}: does not say which weights it was fine-tuned from; not a fine-tuning run")
    recipe, data_dir = resume_plan(run_dir, data_dir, list(overrides), last=kept[-1])
    return run_finetune(meta.finetuned_from, recipe, run_dir, data_dir, meta.arch, progress, log, on_epoch,
                        resume=True)


def run_finetune(weights: str, recipe: Recipe, out: str | Path | None, data_dir: str | None = None,
                 arch: str | None = None, progress: bool = True, log=print, on_epoch=None,
                 resume: bool = False) -> dict[str, Any]:
    """Fine-tune and write the run folder (out None: runs/finetune-<strategy>[-N], chosen by rank 0 in a
    distributed run, where only rank 0 logs and writes). resume: continue the run in `out` (resume_finetune)."""
    try:
        src = read_source(weights, arch or recipe.model.name, recipe.model.kwargs)
    except UserError as e:
        if not resume:
            raise
        raise UserError(f"{out}: resuming needs the weights the run started from: {e}") from None
    f = recipe.finetune
    run = prepare_run(recipe, out, data_dir, arch=src.arch, kwargs=src.kwargs, default_name=f"finetune-{f.strategy}",
                      resume=resume, progress=progress, log=log, on_epoch=on_epoch, mean_std=src.mean_std,
                      pretrained=True, pretrained_size=src.input_size, class_order=src.classes,
                      finetuned_from=src.weights)
    log = run.ctx.log
    classes = list(run.splits.classes)
    torch.manual_seed(recipe.train.seed)
    model, report = src.model(classes, log)
    log(f"fine-tuning {src.arch} ({count_params(model):,} params) on {len(run.splits.train)} images, "
        f"{len(classes)} classes, input {run.ctx.meta.input_size}px, strategy {f.strategy}")

    main = dist_context().is_main
    with claim(run.run_dir, log) if main else contextlib.nullcontext(), interruptible(run.run_dir, "finetune"):
        write_recipe_file(run, recipe)
        if f.strategy == "two-stage":
            before = train_stage(run, recipe, model, "linear-probe", "stage1-", epochs=f.stage1_epochs)
            after = train_stage(run, recipe, model, "full", "stage2-", lr_mult=f.stage2_lr_mult,
                                freeze_stats=f.freeze_bn_stats)
        else:
            after = train_stage(run, recipe, model, f.strategy, f"{f.strategy}-", freeze_stats=f.freeze_bn_stats)
            before = after if f.strategy == "linear-probe" else (
                train_stage(run, recipe, src.model(classes)[0], "linear-probe", "probe-") if f.compare else None)
        if not main:
            return {"loaded": len(report["loaded"]), "new": report["new"], "before": before, "after": after}
        summary = write_summary(run, src.weights, f.strategy, classes, before, after)
        if before:
            log(f"before (linear probe of pretrained net): top-1 {before['test']['top1']:.4f}  "
                f"top-5 {before['test']['top5']:.4f}")
        log(f"after ({f.strategy}): top-1 {after['test']['top1']:.4f}  top-5 {after['test']['top5']:.4f}")
    log(f"run folder: {run.run_dir}")
    return summary


def train_stage(run: PreparedRun, recipe: Recipe, m: nn.Module, strategy: str, prefix: str, lr_mult: float = 1.0,
                epochs: int | None = None, freeze_stats: bool = False) -> dict:
    """One stage: freeze by `strategy`, train with the recipe (lr × lr_mult, `epochs` if given) and test the
    best-on-validation weights; checkpoints are named <prefix>best/last.safetensors."""
    f = recipe.finetune
    r = copy.deepcopy(recipe)
    r.optim.lr *= lr_mult
    if epochs is not None:
        r.train.epochs = epochs
    frozen = apply_strategy(m, strategy, f.unfreeze_stages, freeze_stats)
    run.ctx.log(f"[{prefix.rstrip('-')}] {strategy}: {count_params(m, trainable_only=True):,} trainable params")
    if strategy == "linear-probe" and f.cached_features and not r.train.distill.teacher:
        return train_head_on_features(run, r, m, prefix, frozen)  # (a teacher needs the images: the full path)
    scales = stage_lr_scales(m, f.layer_decay) if strategy != "linear-probe" else None
    tr = Trainer(m, r, run.train, run.val, run.ctx, Stage(prefix, scales, frozen))
    state = tr.fit(resume=run.resume and tr.last_path.is_file())  # a stage not reached yet starts afresh
    res = finish_run(tr, run.splits, run.test, state, log=run.ctx.log)
    tr.release()  # the next stage wraps the model anew (other parameters train)
    res["strategy"] = strategy
    return res


def train_head_on_features(run: PreparedRun, r: Recipe, m: nn.Module, prefix: str, frozen) -> dict:
    """A linear probe trained on the frozen backbone's features, computed once (training.features)."""
    ctx, splits, f = run.ctx, run.splits, r.finetune
    m.to(ctx.device)
    if ctx.channels_last:
        m.to(memory_format=torch.channels_last)
    resize = ctx.meta.input_size if ctx.meta.input_size != splits.train.image_size else None
    feats = compute_features(m, splits.train, splits.val if splits.val is not None else splits.test,
                             views=f.feature_views, augment=r.data.augment, batch_size=run.test.batch_size,
                             seed=r.train.seed, mean=splits.mean, std=splits.std, device=ctx.device,
                             image_size=resize, amp_dtype=ctx.amp_dtype, channels_last=ctx.channels_last, log=ctx.log,
                             progress=ctx.progress and dist_context().is_main)
    d = dist_context()
    train_src = FeatureLoader(feats.train, feats.train_labels, r.train.batch_size, train=True, seed=r.train.seed,
                              shard=(d.rank, d.world_size))
    val_src = FeatureLoader(feats.val, feats.val_labels, r.train.eval_batch_size, shard=(d.rank, d.world_size))
    tr = Trainer(PooledHead(m), r, train_src, val_src, ctx, Stage(prefix, None, frozen, head_train_flops(m)))
    state = tr.fit(resume=run.resume and tr.last_path.is_file())
    res = finish_run(tr, splits, run.test, state, log=ctx.log, unwrap=lambda head: head.net, features=feats)
    tr.release()
    res["strategy"] = "linear-probe"
    return res


def write_summary(run: PreparedRun, weights: str, strategy: str, classes: list[str], before: dict | None,
                  after: dict) -> dict[str, Any]:
    """summary.json (what was fine-tuned, the checkpoint that stands for the run folder, before/after test
    figures, training minutes) and the report page."""
    final = "stage2-" if strategy == "two-stage" else f"{strategy}-"
    stages = [after] if before is None or before is after else [before, after]
    summary = {"weights": weights, "strategy": strategy, "checkpoint": f"{final}best.safetensors",
               "classes": classes, "before_linear_probe": before["test"] if before else None, "after": after["test"],
               "time_min": sum(x["train_time_min"] for x in stages)}
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2))
    write_report(run.run_dir)
    return summary
