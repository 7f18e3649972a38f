"""Distributed data parallel throughput: one process vs N ranks under torchrun on this machine.

Runs the default recipe for a fixed number of steps, once as one process (all cores to its threads)
and once per world size as torchrun ranks (cores split between them), and prints the img/s each run
measured (images of all ranks per wall second, from the engine's own metrics.jsonl) with the machine.
On one 2-core machine DDP cannot beat one process that already uses both cores: the figure shows the
cost of the extra process and the gradient all-reduce; the speed-up comes from more machines or GPUs.

    python benchmarks/distributed.py [--steps 120] [--nproc 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from resnetlab.runtime import cpu_model

HERE = Path(__file__).resolve().parent


def run(nproc: int, steps: int, out: Path, extra: list[str]) -> dict:
    args = ["train", "--out", str(out), "--no-progress", "data.val_size=0", "train.epochs=1",
            f"train.max_steps={steps}", "train.tta=false", *extra]
    env = dict(os.environ)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "resnetlab", *args]
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    else:
        cmd = [sys.executable, "-m", "resnetlab", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"img_s": row["img_per_s"], "time_s": row["epoch_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--nproc", type=int, nargs="+", default=[2])
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.sync_bn=true")
    args = ap.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; default recipe, {args.steps} steps of the global batch 128\n")
    print("| processes | threads each | img/s (all ranks) | epoch wall s (incl. test eval) |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [1, *args.nproc]:
            r = run(n, args.steps, Path(tmp) / f"n{n}", args.overrides)
            threads = (os.cpu_count() or 1) // n if n > 1 else (os.cpu_count() or 1)
            print(f"| {n} | {threads} | {r['img_s']:.0f} | {r['time_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
