"""Accuracy against wall time, per epoch, for one or more recipes run one after another on this machine.

Each recipe runs through `resnetlab train` in its own process (nothing else should run meanwhile: on 2 cores
a second job slows oneDNN kernels badly); from its metrics.jsonl this prints, per epoch, the elapsed
training time and the top-1 the engine measured at that epoch (the test split when the recipe holds out
no validation split — monitoring only, nothing is chosen on it — else the validation split), then the
final test top-1 from results.json. Writes a JSON with the machine (CPU model, the flags that matter,
torch version, threads) and a PNG of accuracy against time.

    python benchmarks/time_to_accuracy.py [recipes/cifar10_quick.yaml ...] [--seeds 0 1] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import torch
    from resnetlab.runtime import cpu_flags, cpu_model
    flags = sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"})
    return {"cpu": cpu_model(), "flags": flags, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def run(recipe: str, seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "resnetlab", "train", "--recipe", recipe, "--out", str(out), "--no-progress",
           f"train.seed={seed}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{recipe}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return {"recipe": recipe, "seed": seed, "wall_s": wall, "test_top1": results["test"]["top1"],
            "epochs": [{"epoch": r["epoch"], "elapsed_s": r["elapsed_s"], "top1": r["val_top1"],
                        "split": r["eval_split"]} for r in rows]}


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
    ap.add_argument("recipes", nargs="*", default=["recipes/cifar10_quick.yaml"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "time_to_accuracy")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info['cpu']} ({', '.join(info['flags'])}), {info['cpus']} CPUs, torch {info['torch']}")
    runs = []
    for recipe in args.recipes:
        for seed in args.seeds:
            r = run(recipe, seed, args.out / f"{Path(recipe).stem}-seed{seed}")
            runs.append(r)
            print(f"\n{recipe} seed {seed}: final test top-1 {100 * r['test_top1']:.2f} % ({r['wall_s'] / 60:.1f} min wall)")
            print("| epoch | training min | top-1 | split |\n|---|---|---|---|")
            for e in r["epochs"]:
                print(f"| {e['epoch']} | {e['elapsed_s'] / 60:.2f} | {100 * e['top1']:.2f} % | {e['split']} |")
    (args.out / "time_to_accuracy.json").write_text(json.dumps({"machine": info, "runs": runs}, indent=2))
    plot(runs, args.out / "time_to_accuracy.png")
    print(f"\nwrote {args.out / 'time_to_accuracy.json'} and {args.out / 'time_to_accuracy.png'}")


if __name__ == "__main__":
    main()
