"""Inference speed of a model in the default (contiguous) memory layout against channels-last, on this machine's
CPU: what `resnetlab.load` (predict, eval, serve) chooses for CPU inference. Random weights (speed does not depend
on them), eval mode, torch.inference_mode, milliseconds per forward pass (the median of --repeats timings of
--seconds each, alternating the layouts), and the largest output difference between the two.

    python benchmarks/inference_layout.py [--seconds 1.5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from _common import machine_line
from resnetlab.models.registry import create_model

CASES = (("resnet20", 32), ("resnet9", 32), ("resnet18", 224), ("resnet50", 160))


def ms_per_pass(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            model(x)
            n += 1
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(machine_line())
    print(f"{torch.get_num_threads()} threads\n")
    print("| model | input | batch | contiguous ms | channels-last ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, size in CASES:
        torch.manual_seed(0)
        plain = create_model(name, num_classes=10).eval()
        last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
        for batch in (1, 8):
            x = torch.randn(batch, 3, size, size)
            xl = x.contiguous(memory_format=torch.channels_last)
            a, b = [], []
            for _ in range(args.repeats):
                a.append(ms_per_pass(plain, x, args.seconds))
                b.append(ms_per_pass(last, xl, args.seconds))
            with torch.inference_mode():
                diff = (plain(x) - last(xl)).abs().max().item()
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {name} | {size} px | {batch} | {ma:.2f} | {mb:.2f} | {ma / mb:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
