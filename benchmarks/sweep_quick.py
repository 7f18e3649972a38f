"""Accuracy-only sweep of the default recipe, many runs side by side (issue 11 §6 and issue 13 §1).

Runs share the machine, so their times mean nothing here; only accuracies are read. Measured on a lent
NVIDIA H200 (16 CPU cores) with WORKERS=17, all runs at once; on a 2-core CPU use WORKERS=1 (hours).

A (issue 11 §6): the default recipe with photo-artefact augmentation in the batch, 2 seeds each, all 50k
   training images; then benchmarks/robustness.py on each final model (its CPU inference, no TTA).
B (issue 13 §1): candidate changes screened on a 45k/5k validation split, 3 seeds each; the figure read
   is the last epoch's validation top-1 (the test figures are recorded but choose nothing).

    RESNETLAB_DATA=... python benchmarks/sweep_quick.py [OUT_DIR]   # a fresh folder; default benchmarks/out/sweep_quick
Prints one JSON line per run and a table of means at the end; writes OUT_DIR/sweep.json.
"""
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "out" / "sweep_quick"
OUT.mkdir(parents=True, exist_ok=True)
W = OUT / "runs"
W.mkdir(parents=True, exist_ok=True)
T0 = time.time()
ROB = {
    "none": [],
    "j50q30r30": ["data.augment.jpeg=0.5", "data.augment.jpeg_quality=[30,95]", "data.augment.resample=0.3"],
    "j30q50r20": ["data.augment.jpeg=0.3", "data.augment.jpeg_quality=[50,95]", "data.augment.resample=0.2"],
    "j50q30r30from5": ["data.augment.jpeg=0.5", "data.augment.jpeg_quality=[30,95]", "data.augment.resample=0.3",
                       "data.augment.artifacts_from_epoch=5"],
}
VAL = {
    "base": [],
    "ls0.1": ["train.label_smoothing=0.1"],
    "bs256": ["train.batch_size=256", "optim.lr=0.2"],
}
# The default recipe as it was when this sweep ran (label smoothing 0.2, epochs 1-2 at 16 px and 3-5 at 24 px);
# B's "ls0.1" is how it became 0.1 (the third 16 px epoch came after, for time).
BASE = ["train.label_smoothing=0.2", "data.augment.epoch_sizes=[16,16,24,24,24]"]
ROOT = Path(__file__).resolve().parent.parent
jobs = [("rob", k, s, v) for k, v in ROB.items() for s in (0, 1)] + \
       [("val", k, s, v + ["data.val_size=5000"]) for k, v in VAL.items() for s in (0, 1, 2)]
results = {}
env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")


def save():
    (OUT / "sweep.json").write_text(json.dumps(results, indent=1))


def one(job):
    kind, name, seed, ov = job
    d = W / f"{kind}-{name}-s{seed}"
    cmd = [sys.executable, "-m", "resnetlab", "train", "--recipe", "recipes/cifar10_quick.yaml", "--out", str(d),
           "--no-progress", f"train.seed={seed}"] + BASE + ov
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    key = f"{kind}/{name}/s{seed}"
    if r.returncode:
        results[key] = {"error": r.stderr.strip().splitlines()[-3:]}
        save()
        return
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    res = json.loads((d / "results.json").read_text())
    results[key] = {"test_top1": res["test"]["top1"], "last_val_top1": rows[-1]["val_top1"],
                    "split": rows[-1]["eval_split"], "done_s": time.time() - T0}
    save()
    if kind == "rob":
        ck = d / "best.safetensors"
        r = subprocess.run([sys.executable, "benchmarks/robustness.py", str(ck)], capture_output=True, text=True,
                           env=env, cwd=ROOT)
        table = {}
        for line in r.stdout.splitlines():
            m = re.match(r"\s+(.+?)\s+top-1 ([0-9.]+)\s", line)
            if m:
                table[m.group(1)] = float(m.group(2))
        results[key]["robustness"] = table if table else {"error": r.stderr.strip().splitlines()[-3:]}
        results[key]["rob_done_s"] = time.time() - T0
        save()
    print(key, json.dumps(results[key]), flush=True)


with ThreadPoolExecutor(max_workers=int(os.environ.get("WORKERS", "17"))) as ex:
    list(ex.map(one, jobs))
print(f"all done in {time.time() - T0:.0f} s\n")

names = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in results))
print("| runs | seeds | last-epoch val top-1 (B) | test top-1, TTA | clean (no TTA) | JPEG q75 | upscaled x4 + q75 |")
print("|---|---|---|---|---|---|---|")
for n in names:
    rs = [v for k, v in results.items() if k.rsplit("/", 1)[0] == n and "error" not in v]
    if not rs:
        continue
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    val = f"{100 * mean([r['last_val_top1'] for r in rs]):.2f} %" if rs[0]["split"] == "val" else "-"
    cells = [val, f"{100 * mean([r['test_top1'] for r in rs]):.2f} %"]
    rob = [r["robustness"] for r in rs if "clean (PNG)" in r.get("robustness", {})]
    if rob:
        clean = mean([t["clean (PNG)"] for t in rob])
        cells.append(f"{100 * clean:.2f} %")
        for v in ("JPEG q75", "upscaled x4 + JPEG q75"):
            cells.append(f"{100 * mean([t[v] for t in rob]):.2f} % ({100 * (mean([t[v] for t in rob]) - clean):+.2f})")
    else:
        cells += ["-"] * 3
    print(f"| {n} | {len(rs)} | " + " | ".join(cells) + " |")
