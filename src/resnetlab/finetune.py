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

from .evaluation.profile import count_params
from .evaluation.report import write_report
from .files import atomic_write_text
from .models import apply_strategy, build_model, stage_lr_scales
from .runtime import dist_context
from .training.config import Recipe
from .training.engine import Stage, Trainer
from .training.features import FeatureLoader, PooledHead, compute_features, head_train_flops
from .training.rundir import claim
from .training.runner import finish_run, interruptible, prepare_run, quiet, write_recipe_file
from .weights import IMAGENET_MEAN, IMAGENET_STD, load_backbone_weights, map_head, read_weights


def run_finetune(weights: str, recipe: Recipe, out: str | Path | None, data_dir: str | None = None,
                 arch: str | None = None, progress: bool = True, log=print, on_epoch=None) -> dict[str, Any]:
    """Fine-tune and write the run folder (out None: runs/finetune-<strategy>[-N], chosen by rank 0 in a
    distributed run, where only rank 0 logs and writes)."""
    sd, src_meta = read_weights(weights)
    name = src_meta.get("arch") or arch or recipe.model.name
    kwargs = src_meta.get("kwargs") or dict(recipe.model.kwargs)
    f = recipe.finetune
    mean_std = (tuple(src_meta["mean"]), tuple(src_meta["std"])) if src_meta.get("mean") else (
        (IMAGENET_MEAN, IMAGENET_STD) if Path(str(weights)).suffix in (".pth", ".pt") else None)
    old = src_meta.get("classes")
    run = prepare_run(recipe, out, data_dir, arch=name, kwargs=kwargs, default_name=f"finetune-{f.strategy}",
                      progress=progress, log=log, on_epoch=on_epoch, mean_std=mean_std, pretrained=True,
                      pretrained_size=src_meta.get("input_size"), class_order=old, finetuned_from=str(weights))
    log, splits, ctx = run.ctx.log, run.splits, run.ctx
    classes = list(splits.classes)
    torch.manual_seed(recipe.train.seed)

    def pretrained_model(say=quiet) -> tuple[nn.Module, dict[str, list[str]]]:
        m = build_model(name, len(classes), kwargs)
        report = load_backbone_weights(m, sd, verbose=say is not quiet, log=say)
        map_head(m, sd, old, classes, log=say)
        return m, report

    model, report = pretrained_model(log)

    def stage(m: nn.Module, strategy: str, prefix: str, lr_mult: float = 1.0, epochs: int | None = None,
              freeze_stats: bool = False) -> dict:
        r = copy.deepcopy(recipe)
        r.optim.lr *= lr_mult
        if epochs is not None:
            r.train.epochs = epochs
        frozen = apply_strategy(m, strategy, f.unfreeze_stages, freeze_stats)
        log(f"[{prefix.rstrip('-')}] {strategy}: {count_params(m, trainable_only=True):,} trainable params")
        if strategy == "linear-probe" and f.cached_features and not r.train.distill.teacher:
            return head_stage(m, r, prefix, frozen)  # (a teacher needs the images: then the full path)
        scales = stage_lr_scales(m, f.layer_decay) if strategy != "linear-probe" else None
        tr = Trainer(m, r, run.train, run.val, ctx, Stage(prefix, scales, frozen))
        state = tr.fit()
        res = finish_run(tr, splits, run.test, state, log=log)
        tr.release()  # the next stage wraps the model anew (other parameters train)
        res["strategy"] = strategy
        return res

    def head_stage(m: nn.Module, r: Recipe, prefix: str, frozen) -> dict:
        """The head trained on the frozen backbone's features, computed once (training.features)."""
        m.to(ctx.device)
        if ctx.channels_last:
            m.to(memory_format=torch.channels_last)
        resize = ctx.meta["input_size"] if ctx.meta["input_size"] != splits.train.image_size else None
        feats = compute_features(m, splits.train, splits.val if splits.val is not None else splits.test,
                                 views=f.feature_views, augment=r.data.augment, batch_size=r.train.eval_batch_size,
                                 seed=r.train.seed, mean=splits.mean, std=splits.std, device=ctx.device,
                                 image_size=resize, amp_dtype=ctx.amp_dtype, channels_last=ctx.channels_last, log=log)
        d = dist_context()
        train_src = FeatureLoader(feats.train, feats.train_labels, r.train.batch_size, train=True, seed=r.train.seed,
                                  shard=(d.rank, d.world_size))
        val_src = FeatureLoader(feats.val, feats.val_labels, r.train.eval_batch_size, shard=(d.rank, d.world_size))
        tr = Trainer(PooledHead(m), r, train_src, val_src, ctx, Stage(prefix, None, frozen, head_train_flops(m)))
        state = tr.fit()
        res = finish_run(tr, splits, run.test, state, log=log, unwrap=lambda head: head.net, features=feats)
        tr.release()
        res["strategy"] = "linear-probe"
        return res

    log(f"fine-tuning {name} ({count_params(model):,} params) on {len(splits.train)} images, "
        f"{len(classes)} classes, input {ctx.meta['input_size']}px, strategy {f.strategy}")

    main = dist_context().is_main
    with claim(run.run_dir, log) if main else contextlib.nullcontext(), interruptible(run.run_dir, resume_hint=False):
        write_recipe_file(run, recipe)
        results: dict[str, Any] = {"loaded": len(report["loaded"]), "new": report["new"]}
        if f.strategy == "two-stage":
            r1 = stage(model, "linear-probe", "stage1-", epochs=f.stage1_epochs)
            r2 = stage(model, "full", "stage2-", lr_mult=f.stage2_lr_mult, freeze_stats=f.freeze_bn_stats)
            results.update(before=r1, after=r2)
        else:
            after = stage(model, f.strategy, f"{f.strategy}-", freeze_stats=f.freeze_bn_stats)
            before = after if f.strategy == "linear-probe" else (
                stage(pretrained_model()[0], "linear-probe", "probe-") if f.compare else None)
            results.update(before=before, after=after)
        if not main:
            return results
        b, a = results["before"], results["after"]
        final = "stage2-" if f.strategy == "two-stage" else f"{f.strategy}-"
        summary = {"weights": str(weights), "strategy": f.strategy, "checkpoint": f"{final}best.safetensors",
                   "classes": classes,
                   "before_linear_probe": b["test"] if b else None, "after": a["test"],
                   "time_min": sum(x["train_time_min"] for x in {id(b): b, id(a): a}.values() if x)}
        atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2))
        write_report(run.run_dir)
        if b:
            log(f"before (linear probe of pretrained net): top-1 {b['test']['top1']:.4f}  top-5 {b['test']['top5']:.4f}")
        log(f"after ({f.strategy}): top-1 {a['test']['top1']:.4f}  top-5 {a['test']['top5']:.4f}")
    log(f"run folder: {run.run_dir}")
    return summary
