"""A 12-trial fine-tuning search against the hand-set defaults, and what pruning saved.

Fine-tunes the default CIFAR-10 model on ../shared/data/cifar100-subset (recipes/finetune_cifar100_subset.yaml
with short trials: 6 epochs, 2 of them head-only in two-stage), searching benchmarks/spaces/finetune_small.yaml
with `resnetlab tune` (TPE, median pruning). The objective is validation top-1 only; each configuration's
test top-1 is read afterwards from its run folder, for this report, and compared with the recipe's defaults
trained with the same budget.

    python benchmarks/tune.py runs/cifar10_quick/best.safetensors [--trials 12]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from resnetlab.runtime import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHORT = ["train.epochs=6", "finetune.stage1_epochs=2", "finetune.compare=false"]


def run_summary(run: Path) -> tuple[float, float]:
    """(best validation top-1 of the final stage, test top-1) of a fine-tuning run folder."""
    summary = json.loads((run / "summary.json").read_text())
    prefix = "stage2-" if summary["strategy"] == "two-stage" else f"{summary['strategy']}-"
    rows = [json.loads(ln) for ln in (run / f"{prefix}metrics.jsonl").read_text().splitlines()]
    return max(r["val_top1"] for r in rows), summary["after"]["top1"]


def main() -> None:
    import optuna

    from resnetlab.finetune import run_finetune
    from resnetlab.training.config import load_recipe
    from resnetlab.tune import tune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    recipe_path = str(ROOT / "recipes" / "finetune_cifar100_subset.yaml")
    overrides = SHORT + [f"data.path={ROOT.parent / 'shared' / 'data' / 'cifar100-subset'}"]
    print(f"machine: {cpu_model()}; {args.trials} trials, budget per trial: {' '.join(SHORT)}\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        default_run = Path(tmp) / "defaults"
        run_finetune(args.weights, load_recipe(recipe_path, overrides), default_run, progress=False, log=lambda *a, **k: None)
        default_min = (time.perf_counter() - t0) / 60
        d_val, d_test = run_summary(default_run)
        print(f"defaults: val top-1 {d_val:.4f}, test top-1 {d_test:.4f} ({default_min:.1f} min)", flush=True)
        t0 = time.perf_counter()
        study_dir = tune(recipe_path, str(HERE / "spaces" / "finetune_small.yaml"), args.trials, "bench",
                         None, None, Path(tmp) / "tune", args.weights, None, overrides, "median", args.seed)
        wall = (time.perf_counter() - t0) / 60
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{study_dir / 'study.db'}")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        pruned = [t for t in study.trials if t.state.name == "PRUNED"]
        best = study.best_trial
        b_val, b_test = run_summary(Path(best.user_attrs["run_dir"]))
        mean_full = sum(t.user_attrs["minutes"] for t in complete) / max(len(complete), 1)
        pruned_min = sum(t.user_attrs.get("minutes", 0.0) or 0.0 for t in pruned)
        print((study_dir / "report.md").read_text())
        shutil.copy(study_dir / "objective.png", Path(tempfile.gettempdir()) / "resnetlab_tune_objective.png")
    print("| configuration | val top-1 | test top-1 |\n|---|---|---|")
    print(f"| recipe defaults (same budget) | {d_val:.4f} | {d_test:.4f} |")
    print(f"| best of {args.trials} trials (trial {best.number}) | {b_val:.4f} | {b_test:.4f} |")
    print("best parameters: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in best.params.items()))
    print(f"\nsearch wall time {wall:.1f} min; {len(pruned)} of {len(study.trials)} trials pruned after "
          f"{pruned_min:.1f} min in all, where running them to the end would have taken about "
          f"{len(pruned) * mean_full:.1f} min: pruning saved ~{len(pruned) * mean_full - pruned_min:.1f} min")


if __name__ == "__main__":
    main()
