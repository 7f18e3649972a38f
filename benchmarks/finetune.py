"""Transfer demonstration: CIFAR-10-pretrained net → ../shared/data/cifar100-subset.

100 classes x 100 PNGs, split 80/20 per class with seed 0 (the 20 are the test set), 10 % of the 80
carved out for validation. Same model, same epoch budget, same augmentation for every run:
from scratch · linear probe · partial (last stage + head) · full · two-stage (head, then all at lr x 0.5).

    python benchmarks/finetune.py --pretrained runs/cifar10_quick/best.safetensors [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from resnetlab.finetune import run_finetune
from resnetlab.models import read_meta
from resnetlab.training.config import load_recipe
from resnetlab.training.runner import train_recipe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrained", default=str(ROOT / "runs" / "cifar10_quick" / "best.safetensors"))
    ap.add_argument("--folder", default=str(ROOT.parent / "shared" / "data" / "cifar100-subset"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "out" / "finetune"))
    ap.add_argument("--json", default=str(HERE / "out" / "finetune.json"))
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    meta = read_meta(args.pretrained)
    recipe_path = ROOT / "recipes" / "finetune_cifar100_subset.yaml"
    common = [f"data.path={args.folder}", f"train.epochs={args.epochs}", "finetune.compare=false",
              "train.early_stopping.patience=0"]
    rows = []

    t0 = time.perf_counter()
    scratch = load_recipe(recipe_path, common + [f"model.name={meta.arch}",
                                                 f"model.kwargs={json.dumps(meta.kwargs)}"])
    res = train_recipe(scratch, out / "scratch", progress=False, log=lambda *_: None)
    rows.append(("from scratch", res["test"], time.perf_counter() - t0))
    print(f"from scratch: {res['test']['top1']:.4f}", flush=True)

    stage1 = max(1, args.epochs * 3 // 10)
    plans = [("linear probe", "linear-probe", []), ("partial (last stage + head)", "partial", ["finetune.unfreeze_stages=1"]),
             ("full", "full", []),
             (f"two-stage ({stage1} head + {args.epochs - stage1} all, lr x0.5)", "two-stage",
              [f"finetune.stage1_epochs={stage1}", f"train.epochs={args.epochs - stage1}"])]
    for label, strategy, extra in plans:
        recipe = load_recipe(recipe_path, common + [f"finetune.strategy={strategy}"] + extra)
        t0 = time.perf_counter()
        summary = run_finetune(args.pretrained, recipe, out / strategy, progress=False, log=lambda *_: None)
        rows.append((label, summary["after"], time.perf_counter() - t0))
        print(f"{label}: {summary['after']['top1']:.4f}", flush=True)

    lines = ["| run | test top-1 | top-5 | time |", "|---|---|---|---|"]
    lines += [f"| {label} | {t['top1'] * 100:.2f} % | {t['top5'] * 100:.2f} % | {sec / 60:.1f} min |"
              for label, t, sec in rows]
    print(f"\nmodel {meta.arch} {meta.kwargs}, pretrained on CIFAR-10 ({args.pretrained}); "
          f"{args.epochs} epochs per run; 2,000 test images (20 per class)")
    print("\n".join(lines))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps([{"run": l, "test": t, "seconds": s} for l, t, s in rows], indent=2))


if __name__ == "__main__":
    main()
