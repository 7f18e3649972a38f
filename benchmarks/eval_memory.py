"""Memory of an evaluation forward pass per image, against the largest activation: the factor behind the evaluation
batch bound (training.runner.EVAL_PEAK_PER_ACTIVATION).

Each (model, input size, batch) runs in its own process: the rise of the peak resident set (ru_maxrss) over one
eval-mode, no-grad fp32 forward of a batch, per image, divided by the bytes of the largest tensor any module
outputs for one image (evaluation.profile.activation_bytes).

    python benchmarks/eval_memory.py [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import machine, machine_line

CASES = [("resnet20", 32, 1000), ("resnet20", 160, 200), ("resnet18", 224, 32), ("resnet50", 224, 16)]

PROBE = """
import gc, json, resource, sys, torch, resnetlab
from resnetlab.evaluation.profile import activation_bytes
arch, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = resnetlab.create_model(arch, num_classes=10).eval()
largest = activation_bytes(model, size)
x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    model(x.float())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
per_image = (after - before) * 1024 / batch
print(json.dumps({"arch": arch, "size": size, "batch": batch, "largest_mb": largest / 1e6,
                  "per_image_mb": per_image / 1e6, "factor": per_image / largest}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"# {machine_line()}")
    print(f"{'model':<10} {'px':>4} {'batch':>5} {'largest MB':>11} {'MB per image':>13} {'factor':>7}")
    rows = []
    for arch, size, batch in CASES:
        r = subprocess.run([sys.executable, "-c", PROBE, arch, str(size), str(batch)], capture_output=True,
                           text=True, check=True)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{arch:<10} {size:>4} {batch:>5} {row['largest_mb']:>11.3f} {row['per_image_mb']:>13.3f} "
              f"{row['factor']:>7.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
