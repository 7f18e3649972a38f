"""Memory and time of a classifier's forward passes at every batch size vs at the service's pass sizes.

oneDNN (PyTorch's CPU kernels) builds and caches kernels per input shape. This drives one classifier with
batches of random size 1..MAX, either run exactly (each size its own shape, as `resnetlab serve
--exact-batches`) or padded to `pass_sizes(MAX)` (1, 2, 4, 8, 16, 24 ... MAX, the default), each in a fresh
process, and prints the process's anonymous resident memory after warm-up and as passes go, and the time per
pass. Run it alone: other processes on the cores change the times, not the memory.

    python benchmarks/pass_sizes.py CKPT [--calls 1200] [--max-batch 64]
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time


def drive(checkpoint: str, mode: str, calls: int, max_batch: int) -> None:
    import torch

    from _common import process_memory_mb
    from resnetlab import load
    from resnetlab.serving.settings import ServeSettings, pass_size_for
    clf = load(checkpoint, device="cpu")
    s = clf.policy.input_size
    settings = ServeSettings(max_batch=max_batch, exact_batches=mode == "exact")
    sizes, warm = settings.pass_sizes, settings.warm_up_sizes  # as the service runs and warms up
    for n in warm:
        clf.logits(torch.zeros(n, 3, s, s, dtype=torch.uint8))
    print(f"| {mode} | warm-up ({len(warm)} sizes) | {process_memory_mb()['anon_mb']:.0f} | |", flush=True)
    rng, seen, t = random.Random(0), set(), time.perf_counter()
    for i in range(1, calls + 1):
        n = rng.randint(1, max_batch)
        run = pass_size_for(n, sizes) if sizes else n
        seen.add(run)
        clf.logits(torch.zeros(run, 3, s, s, dtype=torch.uint8))
        if i % (calls // 4) == 0:
            print(f"| {mode} | {i} passes, {len(seen)} shapes | {process_memory_mb()['anon_mb']:.0f} | "
                  f"{(time.perf_counter() - t) / i * 1000:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--calls", type=int, default=1200)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--mode", choices=("exact", "padded"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        drive(args.checkpoint, args.mode, args.calls, args.max_batch)
        return
    from resnetlab.runtime import cpu_model
    print(f"machine: {cpu_model()}; {args.calls} passes of random size 1..{args.max_batch}\n")
    print("| passes | after | anonymous MB | ms per pass (mean so far) |\n|---|---|---|---|", flush=True)
    for mode in ("exact", "padded"):  # a fresh process each: the kernel cache starts empty
        subprocess.run([sys.executable, __file__, args.checkpoint, "--calls", str(args.calls),
                        "--max-batch", str(args.max_batch), "--mode", mode], check=True)


if __name__ == "__main__":
    main()
