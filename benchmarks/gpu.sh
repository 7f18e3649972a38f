#!/usr/bin/env bash
# The CUDA checks, as one prepared script for a lent GPU machine.
#
#   bash benchmarks/gpu.sh smoke OUT_DIR           # minutes: fast94 and the paper recipe on random data, few steps
#   bash benchmarks/gpu.sh all OUT_DIR [SECONDS]   # RESNETLAB_DATA must hold cifar-10-batches-bin
#
# `all` runs, one after another (never side by side, so each timing is its own):
#   1. fast94 with seeds 0, 1, 2 through benchmarks/time_to_accuracy.py (time to 94 % per seed);
#   2. benchmarks/speed.py --device cuda: ResNet-20/56/18 training throughput, fast path vs the seeds' way,
#      and the GPU's conv/matmul ceilings;
#   3. the paper recipe (ResNet-20, 64k iterations) with whatever is left of SECONDS (default 540) counted
#      from the start of this script; its metrics.jsonl/results.json are copied even when time runs out.
#      On the H200 lent on 2026-11-29 its batch-128 steps took ~10.8 ms (launch-bound), ~11.5 min in all: more
#      than one 10-minute command of that lease, so it ran there with SECONDS=0 (skipped) and on a CPU instead.
# Everything it prints goes to OUT_DIR/gpu.log; the JSON and PNG outputs are copied beside it.
set -u
MODE=${1:?usage: gpu.sh smoke|all OUT_DIR [SECONDS]}
OUT=${2:?usage: gpu.sh smoke|all OUT_DIR [SECONDS]}
BUDGET=${3:-540}
START=$(date +%s)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
W=${WORK:-/tmp/resnetlab_gpu}
mkdir -p "$OUT" "$W"
LOG="$OUT/gpu.log"
say() { echo "== $(date -u +%H:%M:%S) (+$(( $(date +%s) - START )) s) $*" | tee -a "$LOG"; }

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"
grep -m1 "model name" /proc/cpuinfo | tee -a "$LOG"; nproc | tee -a "$LOG"

if [ "$MODE" = smoke ]; then
  # random bytes in the official binary layout (labels 0-9): exercises the CUDA paths, proves nothing about accuracy
  $PY -c "import sys, numpy as np; from resnetlab.testing import write_cifar10_binary as w
r = np.random.default_rng(0); x = lambda n: r.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
print('fake data in', w(sys.argv[1], (x(50000), r.integers(0, 10, 50000)), (x(10000), r.integers(0, 10, 10000))))" \
    "$W/fake" 2>&1 | tee -a "$LOG"
  export RESNETLAB_DATA="$W/fake"
  say "smoke: fast94, 8 short epochs on 5000 random images (the last at 32 px)"
  $PY -m resnetlab train --recipe cifar10_fast94 --out "$W/smoke94" --no-progress data.verify=false \
    data.subset=5000 train.epochs=8 train.eval_every=1 2>&1 | tail -n 25 | tee -a "$LOG"
  say "smoke: paper recipe, 400 steps"
  $PY -m resnetlab train --recipe cifar10_resnet20_paper --out "$W/smokepaper" --no-progress \
    data.verify=false data.val_size=1000 train.max_steps=400 train.epochs=2 2>&1 | tail -n 12 | tee -a "$LOG"
  say "smoke: speed.py worker (fast path, resnet18)"
  $PY benchmarks/speed.py --worker --model resnet18 --kwargs '{"stem": "cifar"}' --path fast --steps 20 \
    --device cuda --data-dir "$W/fake" --no-verify 2>&1 | tail -n 5 | tee -a "$LOG"
  say "smoke done"
  exit 0
fi

: "${RESNETLAB_DATA:?set RESNETLAB_DATA to the folder that holds cifar-10-batches-bin}"
say "1. fast94, seeds 0 1 2"
$PY benchmarks/time_to_accuracy.py cifar10_fast94@0,1,2 --out "$W/tta" 2>&1 | tee -a "$LOG"
cp "$W/tta/time_to_accuracy.json" "$OUT/fast94.json" 2>/dev/null
cp "$W/tta/time_to_accuracy.png" "$OUT/fast94.png" 2>/dev/null
say "2. speed.py on the GPU"
$PY benchmarks/speed.py --device cuda --steps 100 --skip-inference --json "$OUT/speed.json" 2>&1 | tee -a "$LOG"
LEFT=$(( BUDGET - ($(date +%s) - START) - 15 ))
say "3. paper recipe, ${LEFT} s left for it"
if [ "$LEFT" -gt 30 ]; then
  timeout "$LEFT" $PY -m resnetlab train --recipe cifar10_resnet20_paper --out "$W/paper" --no-progress \
    2>&1 | tee -a "$LOG"
  cp "$W/paper/metrics.jsonl" "$OUT/paper_metrics.jsonl" 2>/dev/null
  cp "$W/paper/results.json" "$OUT/paper_results.json" 2>/dev/null
  tail -n 3 "$W/paper/metrics.jsonl" 2>/dev/null | tee -a "$LOG"
fi
say "done"
