"""Accuracy against wall time, per epoch, for one or more recipes run one after another on this machine.

Each recipe runs through `resnetlab train` in its own process (nothing else should run meanwhile: on 2 cores
a second job slows oneDNN kernels badly); from its metrics.jsonl this prints, per epoch, the elapsed
training time and the top-1 the engine measured at that epoch (the test split when the recipe holds out
no validation split — monitoring only, nothing is chosen on it — else the validation split), then the
final test top-1 from results.json. Writes a JSON with the machine (CPU model, the flags that matter,
torch version, threads) and a PNG of accuracy against time.

    python benchmarks/time_to_accuracy.py [RECIPE[@SEEDS] ...] [--seeds 0 1] [--out DIR]

RECIPE@0,1 runs that recipe with seeds 0 and 1 (other recipes get --seeds). With no recipes it runs the
comparison of docs/results/training.md: the pinned previous default (benchmarks/recipes/cifar10_quick_v2.yaml, seed 0
and 1), the current default (seeds 0 and 1) and fast94 (seed 0), one after another: about 50 minutes on a
2-core Zen 4.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import HERE, RunFailed, machine, machine_line, run


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for r in runs:
        xs = [e["elapsed_s"] / 60 for e in r["epochs"]]
        ax.plot(xs, [100 * e["top1"] for e in r["epochs"]], "o-", label=f"{Path(r['recipe']).stem} seed {r['seed']}")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("top-1 at epoch end (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=["benchmarks/recipes/cifar10_quick_v2.yaml@0,1",
                                                   "cifar10_quick@0,1", "cifar10_fast94@0"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "time_to_accuracy")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {machine_line(info)}"
          + (f", GPU {info['gpu']} (the runs train there)" if "gpu" in info else ""))
    runs = []
    plan = []
    for item in args.recipes:
        recipe, _, seeds = item.partition("@")
        try:
            plan += [(recipe, int(s)) for s in seeds.split(",")] if seeds else [(recipe, s) for s in args.seeds]
        except ValueError:
            raise SystemExit(f"{item}: seeds after @ must be integers separated by commas, e.g. {recipe}@0,1")
    for recipe, seed in plan:
        try:
            r = run(recipe, seed, args.out / f"{Path(recipe).stem}-seed{seed}")
        except RunFailed as e:
            raise SystemExit(str(e))
        runs.append(r)
        print(f"\n{recipe} seed {seed}: final test top-1 {100 * r['test_top1']:.2f} % ({r['wall_s'] / 60:.2f} min "
              f"wall, {r['train_s'] / 60:.2f} min = {r['train_s']:.1f} s training, {r['train_pflop']:.3f} PFLOP)",
              flush=True)
        print("| epoch | training min | top-1 | split |\n|---|---|---|---|")
        for e in r["epochs"]:
            print(f"| {e['epoch']} | {e['elapsed_s'] / 60:.2f} | {100 * e['top1']:.2f} % | {e['split']} |")
    print("\n| recipe | seed | test top-1 | training min | wall min | PFLOP |\n|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {Path(r['recipe']).stem} | {r['seed']} | {100 * r['test_top1']:.2f} % | {r['train_s'] / 60:.2f} | "
              f"{r['wall_s'] / 60:.2f} | {r['train_pflop']:.3f} |")
    by: dict[str, list[float]] = {}
    for r in runs:
        by.setdefault(r["recipe"], []).append(r["test_top1"])
    for recipe, accs in by.items():
        print(f"{Path(recipe).stem}: mean test top-1 {100 * sum(accs) / len(accs):.2f} % over {len(accs)} seed(s)")
    (args.out / "time_to_accuracy.json").write_text(json.dumps({"machine": info, "runs": runs}, indent=2))
    plot(runs, args.out / "time_to_accuracy.png")
    print(f"\nwrote {args.out / 'time_to_accuracy.json'} and {args.out / 'time_to_accuracy.png'}")


if __name__ == "__main__":
    main()
