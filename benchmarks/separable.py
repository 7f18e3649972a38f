"""Depthwise-separable vs standard residual blocks: params, MACs, CPU training and inference speed.

Each pair is built and timed side by side in this process, with the engine's own training step
(precision and channels_last as the engine picks them for this CPU) on CIFAR-sized batches. Accuracy
after the default recipe's budget comes from two trainings (not run here; each takes minutes):

    ./run train                                                   # standard blocks (the default recipe)
    ./run train name=cifar10_quick_separable model.kwargs.block=separable

    python benchmarks/separable.py [--steps 20]
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import median_step_seconds
from resnetlab.evaluation.profile import count_macs, count_params
from resnetlab.models import create_model
from resnetlab.training.config import load_recipe
from resnetlab.runtime import cpu_model
from resnetlab.training.runner import setup_runtime

MODELS = [("resnet9", {"widths": [16, 32, 64, 128], "whiten": True}, "(default recipe's net)"),
          ("resnet20", {}, ""), ("resnet56", {}, ""), ("resnet18", {"stem": "cifar"}, "(stem=cifar)")]


def time_train(model: torch.nn.Module, amp, cl: bool, steps: int, bs: int = 128) -> float:
    """img/s of forward + backward + SGD step, after warm-up, median of per-step times."""
    x = torch.randn(bs, 3, 32, 32)
    y = torch.randint(0, 10, (bs,))
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return bs / median_step_seconds(model, [(x, y)] * (steps + 3), amp, warm=3)


@torch.no_grad()
def time_infer(model: torch.nn.Module, amp, cl: bool, bs: int = 256, reps: int = 10) -> float:
    model.eval()
    x = torch.randn(bs, 3, 32, 32)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(reps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            model(x)
        if i >= 2:
            times.append(time.perf_counter() - t)
    times.sort()
    return bs / times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device, amp, cl = setup_runtime(load_recipe("cifar10_quick", []))
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads; precision {amp or 'fp32'}, "
          f"channels_last {cl}; batch 128 (train), 256 (inference)\n")
    print("| model | block | params | MACs (M) | train img/s | infer img/s | train MAC/s (G) |")
    print("|---|---|---|---|---|---|---|")
    for name, kw, note in MODELS:
        rows = []
        for block in ("standard", "separable"):
            torch.manual_seed(0)
            m = create_model(name, num_classes=10, block=block, **kw)
            macs = count_macs(m, 32)
            rows.append((block, count_params(m), macs, time_train(m, amp, cl, args.steps), time_infer(m, amp, cl)))
        for block, params, macs, tr, inf in rows:
            label = f"{name} {note}".strip()
            print(f"| {label} | {block} | {params:,} | {macs / 1e6:.1f} | {tr:.0f} | {inf:.0f} | "
                  f"{3 * macs * tr / 1e9:.1f} |", flush=True)
        (_, p0, m0, t0, i0), (_, p1, m1, t1, i1) = rows
        print(f"| {name}: separable / standard | | {p1 / p0:.2f}x | {m1 / m0:.2f}x | {t1 / t0:.2f}x | "
              f"{i1 / i0:.2f}x | |", flush=True)


if __name__ == "__main__":
    main()
