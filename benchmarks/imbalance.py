"""Imbalanced folders: macro-averaged recall (mean per-class test accuracy) with and without the remedies.

An imbalanced slice of the bundled cifar100-subset folder (100 PNGs per class): the first --classes classes
(sorted), the last 25 images of each held out as a balanced test split, and of the first 75 a long tail of
75 * (1/ratio)^(c/(C-1)) training images for class c (75 down to 75/ratio), the profile of long-tailed CIFAR (Cui
et al. 2019). Each variant trains the same recipe from scratch in its own process, alone:

    none          the plain recipe
    weights       train.class_weights=balanced (the loss weighs class c by N / (C * N_c))
    sampler       data.order=balanced (each epoch draws N images with replacement, classes equally likely)

No validation split (data.val_size=0): the final weights are tested, nothing is selected on test. With --weights
CKPT the variants fine-tune those weights instead (the bundled finetune_cifar100_subset recipe, two-stage, at
32 px, without early stopping, which would need a validation split).

    python benchmarks/imbalance.py [--classes 20] [--ratio 10] [--epochs 40] [--seeds 0 1] [--weights CKPT]
                                   [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import HERE, RunFailed, machine, machine_line, run

VARIANTS = {"none": [], "weights": ["train.class_weights=balanced"], "sampler": ["data.order=balanced"]}
TEST_PER_CLASS = 25


def make_slice(source: Path, out: Path, classes: int, ratio: float) -> dict[str, int]:
    """out/train and out/test as symlinks into source; the training images per class."""
    names = sorted(d.name for d in source.iterdir() if d.is_dir())[:classes]
    counts = {}
    for c, name in enumerate(names):
        files = sorted((source / name).iterdir())
        pool, test = files[:-TEST_PER_CLASS], files[-TEST_PER_CLASS:]
        n = max(1, round(len(pool) * (1 / ratio) ** (c / max(classes - 1, 1))))
        counts[name] = n
        for split, chosen in (("train", pool[:n]), ("test", test)):
            d = out / split / name
            d.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                link = d / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
    return counts


def finetune(weights: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """One `resnetlab finetune` in its own process; its final stage's results (test figures, per-class accuracy)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "resnetlab", "finetune", "--weights", weights, "--out", str(out), "--no-progress",
           f"train.seed={seed}", *overrides]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if r.returncode:
        raise RunFailed(f"finetune: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'}")
    summary = json.loads((out / "summary.json").read_text())
    prefix = summary["checkpoint"][: -len("best.safetensors")]
    results = json.loads((out / f"{prefix}results.json").read_text())
    return {"test_top1": results["test"]["top1"], "per_class": results["per_class"],
            "train_s": 60 * summary["time_min"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("RESNETLAB_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--ratio", type=float, default=10.0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--weights", default=None, help="fine-tune these weights instead of training from scratch")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", default=str(HERE.parent / "runs" / "bench-imbalance"),
                   help="where the slice and the runs go (default: runs/bench-imbalance of the checkout)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = Path(args.out).resolve()
    counts = make_slice(Path(args.data) / "cifar100-subset", out / "data", args.classes, args.ratio)
    print(f"# {machine_line()}")
    print(f"# {args.classes} classes, {sum(counts.values())} training images ({max(counts.values())} down to "
          f"{min(counts.values())} per class), {TEST_PER_CLASS * args.classes} test images (balanced)")
    overrides = ["data.dataset=folder", f"data.path={out / 'data'}", "data.image_size=32", "data.val_size=0",
                 f"train.epochs={args.epochs}", "train.batch_size=100", "data.augment.epoch_sizes=[]",
                 "train.tta=false"]
    if args.weights:
        overrides = ["--data", str(out / "data"), "data.image_size=32", "data.val_size=0",
                     "train.early_stopping.patience=0", "finetune.compare=false", "train.batch_size=100",
                     f"train.epochs={args.epochs}"]
    print(f"# {'fine-tuning ' + args.weights if args.weights else 'from scratch: cifar10_quick'}, "
          f"{args.epochs} epochs{' after the head stage' if args.weights else ''}")
    rows = []
    print(f"{'variant':<9} {'seed':>4} {'top-1':>7} {'macro recall':>13} {'worst-5 recall':>15} {'min':>6}")
    for name, extra in VARIANTS.items():
        if name not in args.variants:
            continue
        for seed in args.seeds:
            try:
                if args.weights:
                    r = finetune(args.weights, seed, out / f"{name}-{seed}", [*overrides, *extra])
                    per_class = r["per_class"]
                else:
                    r = run("cifar10_quick", seed, out / f"{name}-{seed}", [*overrides, *extra])
                    per_class = json.loads((out / f"{name}-{seed}" / "results.json").read_text())["per_class"]
            except RunFailed as e:
                print(f"{name:<9} {seed:>4} failed: {e}")
                continue
            recall = [per_class[c] for c in counts]  # per-class accuracy = recall
            tail = sorted(recall)[:5]
            row = {"variant": name, "seed": seed, "top1": r["test_top1"], "macro_recall": statistics.mean(recall),
                   "worst5_recall": statistics.mean(tail), "min_recall": min(recall), "train_s": r["train_s"]}
            rows.append(row)
            print(f"{name:<9} {seed:>4} {row['top1']:>7.4f} {row['macro_recall']:>13.4f} "
                  f"{row['worst5_recall']:>15.4f} {row['min_recall']:>6.3f}", flush=True)
    for name in args.variants:
        mine = [r for r in rows if r["variant"] == name]
        if mine:
            print(f"mean {name:<9} macro recall {statistics.mean(r['macro_recall'] for r in mine):.4f}  "
                  f"worst-5 {statistics.mean(r['worst5_recall'] for r in mine):.4f}  ({len(mine)} seeds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "counts": counts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
