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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .evaluation.profile import count_params
from .evaluation.report import write_report
from .files import atomic_write_text
from .models import apply_strategy, build_model, natural_input_size, stage_lr_scales
from .training.config import Recipe
from .training.engine import Trainer
from .runtime import broadcast_str, dist_context
from .training.rundir import claim, next_run_dir
from .training.runner import (check_out_dir, data_ref, finish_run, load_splits, make_loaders, model_meta, quiet,
                               setup_runtime)
from .weights import IMAGENET_MEAN, IMAGENET_STD, load_backbone_weights, map_head, read_weights


def run_finetune(weights: str, recipe: Recipe, out: str | Path | None, data_dir: str | None = None,
                 arch: str | None = None, progress: bool = True, log=print, on_epoch=None) -> dict[str, Any]:
    """Fine-tune and write the run folder (out None: runs/finetune-<strategy>[-N], chosen by rank 0 in a
    distributed run, where only rank 0 logs and writes)."""
    device, amp, cl = setup_runtime(recipe, distributed=True)
    ctx = dist_context()
    if not ctx.is_main:
        log = quiet
    if out is None:
        default = next_run_dir(Path("runs") / f"finetune-{recipe.finetune.strategy}")
        out = broadcast_str(str(default) if ctx.is_main else "")
    run_dir = Path(out)
    if (run_dir / "summary.json").exists() or (run_dir / "last.safetensors").exists():
        raise UserError(f"{run_dir}: already holds a run; choose another --out")
    check_out_dir(run_dir)
    sd, src_meta = read_weights(weights)
    name = src_meta.get("arch") or arch or recipe.model.name
    kwargs = src_meta.get("kwargs") or dict(recipe.model.kwargs)
    f = recipe.finetune
    input_size = recipe.data.image_size or src_meta.get("input_size") or natural_input_size(name, **kwargs)
    if recipe.data.dataset == "folder":
        recipe.data.image_size = input_size
    mean_std = (tuple(src_meta["mean"]), tuple(src_meta["std"])) if src_meta.get("mean") else (
        (IMAGENET_MEAN, IMAGENET_STD) if Path(str(weights)).suffix in (".pth", ".pt") else None)
    splits = load_splits(recipe.data, data_dir, progress and ctx.is_main, mean_std=mean_std)
    classes = list(splits.classes)
    old = src_meta.get("classes")
    if old and set(old) <= set(classes) and old != classes[:len(old)]:
        # keep the old order, append new classes: the head rows stay where they were
        classes = old + [c for c in classes if c not in old]
        remap = torch.tensor([classes.index(c) for c in splits.classes])
        for ds in (splits.train, splits.val, splits.test):
            if ds is not None:
                ds.labels = remap[ds.labels]
                ds.classes = classes
    torch.manual_seed(recipe.train.seed)

    def fresh_model() -> nn.Module:
        m = build_model(name, len(classes), kwargs)
        load_backbone_weights(m, sd, verbose=False)
        map_head(m, sd, old, classes, log=lambda *_: None)
        return m

    model = build_model(name, len(classes), kwargs)
    report = load_backbone_weights(model, sd, log=log)
    map_head(model, sd, old, classes, log=log)
    meta = model_meta(name, kwargs, classes, splits.mean, splits.std, input_size, recipe,
                      decode_size=splits.train.images.shape[-1], dataset=data_ref(recipe.data, data_dir),
                      finetuned_from=str(weights))
    train_l, val_l, test_l = make_loaders(recipe, splits, device, cl, input_size)

    def stage(m: nn.Module, strategy: str, prefix: str, lr_mult: float = 1.0, epochs: int | None = None,
              freeze_stats: bool = False) -> dict:
        r = copy.deepcopy(recipe)
        r.optim.lr *= lr_mult
        if epochs is not None:
            r.train.epochs = epochs
        frozen = apply_strategy(m, strategy, f.unfreeze_stages, freeze_stats)
        scales = stage_lr_scales(m, f.layer_decay) if strategy != "linear-probe" else None
        tr = Trainer(m, r, train_l, val_l, run_dir, meta, device, amp, cl, lr_scales=scales,
                     frozen_bn=frozen, progress=progress, log=log, prefix=prefix, monitor_only=splits.val is None,
                     on_epoch=on_epoch)
        log(f"[{prefix.rstrip('-')}] {strategy}: {count_params(m, trainable_only=True):,} trainable params")
        state = tr.fit()
        res = finish_run(tr, splits, test_l, state, log=log)
        tr.release()  # the next stage wraps the model anew (other parameters train)
        res["strategy"] = strategy
        return res

    log(f"fine-tuning {name} ({count_params(model):,} params) on {len(splits.train)} images, "
        f"{len(classes)} classes, input {input_size}px, strategy {f.strategy}")

    with claim(run_dir, log) if ctx.is_main else contextlib.nullcontext():
        results: dict[str, Any] = {"loaded": len(report["loaded"]), "new": report["new"]}
        if f.strategy == "two-stage":
            r1 = stage(model, "linear-probe", "stage1-", epochs=f.stage1_epochs)
            r2 = stage(model, "full", "stage2-", lr_mult=f.stage2_lr_mult, freeze_stats=f.freeze_bn_stats)
            results.update(before=r1, after=r2)
        else:
            after = stage(model, f.strategy, f"{f.strategy}-", freeze_stats=f.freeze_bn_stats)
            before = after if f.strategy == "linear-probe" else (
                stage(fresh_model(), "linear-probe", "probe-") if f.compare else None)
            results.update(before=before, after=after)
        if not ctx.is_main:
            return results
        b, a = results["before"], results["after"]
        summary = {"weights": str(weights), "strategy": f.strategy, "classes": classes,
                   "before_linear_probe": b["test"] if b else None, "after": a["test"],
                   "time_min": sum(x["train_time_min"] for x in {id(b): b, id(a): a}.values() if x)}
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        write_report(run_dir)
        if b:
            log(f"before (linear probe of pretrained net): top-1 {b['test']['top1']:.4f}  top-5 {b['test']['top5']:.4f}")
        log(f"after ({f.strategy}): top-1 {a['test']['top1']:.4f}  top-5 {a['test']['top5']:.4f}")
    log(f"run folder: {run_dir}")
    return summary
