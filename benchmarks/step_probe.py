"""Is there speed left in a recipe's training step? Measured in this run, on real CIFAR-10 batches through the
engine's own Trainer.train_step (the recipe's optimiser, precision and memory format):

1. steady-state img/s at each image size of the recipe's progressive-resizing schedule, eager and under
   `torch.compile` (the recipe key train.compile), with the compilation's own seconds;
2. the achieved training TFLOP/s (FLOPs counted on a real backward, as the run's PFLOP figure), beside this
   machine's 3x3-conv forward ceiling in the step's precision (_common.ceilings, measured here too);
3. where an eager full-size step spends its time: torch.profiler's self-time share of each operator kind.

    RESNETLAB_DATA=... python benchmarks/step_probe.py [--recipe cifar10_quick] [--steps 12] [--json OUT]
        [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def op_kind(name: str) -> str:
    for key, kind in (("convolution", "convolution"), ("conv", "convolution"), ("batch_norm", "batch norm"),
                      ("max_pool", "max pool"), ("gelu", "activation"), ("relu", "activation"),
                      ("threshold", "activation"), ("_foreach", "optimiser"), ("mm", "matmul (Muon, head)"),
                      ("copy_", "copies / casts"), ("to_copy", "copies / casts")):
        if key in name:
            return kind
    return "other"


def profile_shares(tr, loader, epoch: int, steps: int = 3) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile
    loader.set_epoch(epoch)
    it = iter(loader)
    tr.train_step(*next(it))[0].item()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            tr.train_step(*next(it))[0].item()
    kinds = defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            kinds[op_kind(ev.key)] += ev.self_cpu_time_total
    total = sum(kinds.values())
    return {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="cifar10_quick")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per size, after the warm-up")
    ap.add_argument("--warm", type=int, default=3, help="warm-up steps per size (they include compilation)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", default=str(HERE / "out" / "step_probe.json"))
    ap.add_argument("overrides", nargs="*", help="recipe key=value")
    args = ap.parse_args()

    from resnetlab.evaluation.profile import count_train_flops
    from resnetlab.runtime import describe_device
    from resnetlab.training.config import load_recipe
    from resnetlab.training.runner import load_splits, setup_runtime
    sys.path.insert(0, str(HERE))
    from _common import build_trainer, ceilings, machine, time_steps

    recipe = load_recipe(args.recipe, ["data.val_size=0", *args.overrides])
    device, amp, cl = setup_runtime(recipe)
    splits = load_splits(recipe.data, args.data_dir, progress=False)
    full = splits.train.image_size
    sizes = list(recipe.data.augment.epoch_sizes[:max(recipe.train.epochs - 1, 0)])
    first_epoch = {}
    for e, s in enumerate(sizes + [full]):
        first_epoch.setdefault(s, e)
    prec = "bf16" if amp == torch.bfloat16 else "fp32"
    host = machine()
    print(f"{args.recipe}: {recipe.model.name} {recipe.model.kwargs}, batch {recipe.train.batch_size}, "
          f"{describe_device(device, amp)}{', channels_last' if cl else ''}; {host['cpu']}, "
          f"{host['threads']} threads, torch {host['torch']}")
    rows, result = [], {"recipe": args.recipe, "overrides": args.overrides, "machine": host, "precision": prec,
                        "channels_last": cl}
    modes = ["eager"] + ([] if args.no_compile else ["torch.compile"])
    for mode in modes:
        recipe.train.compile = mode == "torch.compile"
        tr, loader = build_trainer(recipe, splits, device, amp, cl)
        for size, epoch in sorted(first_epoch.items()):
            warm_s, img_s = time_steps(tr, loader, epoch, args.warm, args.steps)
            tflops = img_s * count_train_flops(tr.model, size) / 1e12
            rows.append({"mode": mode, "size": size, "img_s": img_s, "tflops": tflops, "warm_s": warm_s})
            print(f"{mode:>13} {size:>3} px: {img_s:7.0f} img/s, {tflops:.3f} TFLOP/s "
                  f"(first {args.warm} steps {warm_s:.1f} s)", flush=True)
        if mode == "eager":
            result["op_shares"] = profile_shares(tr, loader, first_epoch[full])
    result["steps"] = rows
    ceil = ceilings(device)
    result["ceilings_tflops"] = ceil
    print(f"3x3-conv forward ceiling ({prec}): {ceil['conv_' + prec]:.3f} TFLOP/s; "
          f"matmul {ceil['matmul_' + prec]:.3f}")
    print(f"eager {full}-px step, self time by operator kind: "
          + ", ".join(f"{k} {v:.0%}" for k, v in result["op_shares"].items()))
    eager = {r["size"]: r["img_s"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        if r["mode"] != "eager":
            print(f"torch.compile / eager at {r['size']} px: {r['img_s'] / eager[r['size']]:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
