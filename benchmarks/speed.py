"""Speed figures, each measured in this run:

1. training throughput (steady state) — resnetlab's fast path (the engine's own train_step on the
   in-memory pipeline, auto precision, channels_last, foreach SGD) vs the seeds' way (fp32 NCHW,
   torchvision DataLoader + PIL transforms with 2 workers, plain SGD loop with loss.item() per step),
   their ratio, achieved TFLOP/s from the MAC count, and each run's peak RSS (own process);
2. inference: throughput at batch 256 and latency at batch 1, eager fp32 vs channels_last vs bf16
   autocast vs torch.compile;
3. this machine's ceilings, measured in the same run: a ResNet-18-sized 3x3 conv forward (fp32, bf16) and a
   4096^3 matmul; each training rate as a fraction of the ceiling of its precision, and the ratio's ceiling
   (bf16 conv ceiling / the seeds' achieved fp32 rate).

    python benchmarks/speed.py [--data-dir DIR] [--steps 8] [--device cpu|cuda] [--json benchmarks/out/speed.json]

With --device cuda both ways train on the GPU (the seeds' way moves each DataLoader batch there, as the
tutorials do), the ceilings are measured on the GPU, and the inference section is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import ceilings, sync

HERE = Path(__file__).resolve().parent
MODELS = [("resnet20", {}), ("resnet56", {}), ("resnet18", {"stem": "cifar"})]


def worker_train(args) -> dict:
    """Runs in its own process so its peak RSS is its own."""
    import torch.nn.functional as F
    from resnetlab.data import cifar10, resolve_data_root
    from resnetlab.evaluation.profile import count_macs
    from resnetlab.models import create_model
    from resnetlab.training.config import load_recipe
    from resnetlab.training.runner import Splits, setup_runtime
    sys.path.insert(0, str(HERE))
    from _common import build_trainer, time_steps

    kw = json.loads(args.kwargs)
    train, test = cifar10(resolve_data_root(args.data_dir), verify=not args.no_verify)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, **kw)
    macs = count_macs(model, 32)
    dev = torch.device(args.device)
    # cudnn picks its kernels during the first steps (benchmark mode): more warm-up on a GPU
    bs, steps, warm = args.batch_size, args.steps, 2 if dev.type == "cpu" else 5
    if args.path == "fast":
        recipe = load_recipe(None, [f"model.name={args.model}", f"model.kwargs={args.kwargs}",
                                    f"train.batch_size={bs}", "data.val_size=0", "schedule.name=constant",
                                    f"train.device={args.device}"])
        device, amp, cl = setup_runtime(recipe)
        splits = Splits(train, None, test, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        tr, train_l = build_trainer(recipe, splits, device, amp, cl)
        _, img_s = time_steps(tr, train_l, 0, warm, steps)  # each timing ends on loss.item(): synced on a GPU too
        label = f"{'fp32' if amp is None else str(amp)[6:]}{', channels_last' if cl else ''}"
    else:
        from _common import PILCifar
        import torchvision.transforms as T
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
        ds = PILCifar(train.images.permute(0, 2, 3, 1).numpy(), train.labels.numpy(), tf)
        dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=2, drop_last=True)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # what GPU tutorials set
        model.to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        model.train()
        it = iter(dl)
        t0 = None
        for i in range(warm + steps):
            if i == warm:
                sync(dev)
                t0 = time.perf_counter()
            x, y = next(it)
            x, y = x.to(dev), y.to(dev)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        img_s = bs * steps / (time.perf_counter() - t0)
        label = "fp32, NCHW, DataLoader(2 workers)"
    return {"model": args.model, "kwargs": kw, "path": args.path, "config": label, "img_s": img_s,
            "tflops": img_s * macs * 2 * 3 / 1e12, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_worker(model: str, kw: dict, path: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--kwargs", json.dumps(kw), "--path", path,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def inference(name: str, kw: dict) -> list[dict]:
    from resnetlab.models import create_model
    from resnetlab.runtime import cpu_has_fast_bf16
    rows = []
    variants = [("eager fp32", {}), ("channels_last fp32", {"cl": True}), ("bf16 autocast", {"bf16": True, "cl": True})]
    if os.environ.get("SPEED_COMPILE", "1") == "1":
        variants.append(("torch.compile fp32", {"compile": True, "cl": True}))
    for label, opt in variants:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, **kw).eval()
        if opt.get("cl"):
            model = model.to(memory_format=torch.channels_last)
        fn = torch.compile(model) if opt.get("compile") else model
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(opt.get("bf16")))
        res = {"model": name, "variant": label}
        with torch.no_grad(), ctx:
            for bs, key in ((256, "throughput"), (1, "latency")):
                x = torch.randn(bs, 3, 32, 32)
                if opt.get("cl"):
                    x = x.contiguous(memory_format=torch.channels_last)
                for _ in range(2):
                    fn(x)
                times = []
                for _ in range(3 if bs > 1 else 30):
                    t0 = time.perf_counter()
                    fn(x)
                    times.append(time.perf_counter() - t0)
                res["img_s_b256" if bs > 1 else "latency_ms_b1"] = (
                    256 / statistics.median(times) if bs > 1 else 1000 * statistics.median(times))
        res["native_bf16"] = cpu_has_fast_bf16()
        rows.append(res)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--kwargs", default="{}")
    ap.add_argument("--path", default="fast")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)  # gpu.sh's smoke test: random data
    ap.add_argument("--json", default=str(HERE / "out" / "speed.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker_train(args)))
        return
    report: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads()}
    from resnetlab.runtime import describe_device
    device = torch.device(args.device)
    report["device"] = describe_device(device, None).rsplit(",", 1)[0]  # each row names its own precision
    print(f"device: {report['device']}, torch {torch.__version__}", flush=True)
    ceil = ceilings(device)
    report["ceilings_tflops"] = ceil
    print(f"ceilings (TFLOP/s): 3x3 conv fp32 {ceil['conv_fp32']:.3f}, bf16 {ceil['conv_bf16']:.3f}; "
          f"matmul 4096^3 fp32 {ceil['matmul_fp32']:.3f}, bf16 {ceil['matmul_bf16']:.3f}", flush=True)
    rows = []
    for name, kw in MODELS:
        fast = run_worker(name, kw, "fast", args)
        seed = run_worker(name, kw, "seed", args)
        rows.append({"fast": fast, "seed": seed, "ratio": fast["img_s"] / seed["img_s"]})
        fast_ceiling = ceil["conv_bf16"] if "bfloat16" in fast["config"] else ceil["conv_fp32"]
        print(f"{name}{' ' + str(kw) if kw else ''}: fast {fast['img_s']:.0f} img/s ({fast['config']}, "
              f"{fast['tflops']:.3f} TFLOP/s = {fast['tflops'] / fast_ceiling:.0%} of its conv ceiling, peak RSS "
              f"{fast['peak_rss_mb']:.0f} MiB) | seeds' way {seed['img_s']:.0f} img/s ({seed['tflops']:.3f} TFLOP/s "
              f"= {seed['tflops'] / ceil['conv_fp32']:.0%} of the fp32 ceiling, peak RSS {seed['peak_rss_mb']:.0f} MiB) | "
              f"ratio {fast['img_s'] / seed['img_s']:.2f}x, its ceiling {ceil['conv_bf16'] / seed['tflops']:.2f}x "
              f"(bf16 conv ceiling / the seeds' achieved fp32 rate)", flush=True)
        rows[-1].update(fast_fraction=fast["tflops"] / fast_ceiling, ratio_ceiling=ceil["conv_bf16"] / seed["tflops"])
    report["training"] = rows
    if not args.skip_inference and device.type == "cpu":
        report["inference"] = []
        for name, kw in (("resnet20", {}), ("resnet18", {"stem": "cifar"})):
            for r in inference(name, kw):
                report["inference"].append(r)
                print(f"inference {name} {r['variant']:<20} batch 256: {r['img_s_b256']:8.0f} img/s   "
                      f"batch 1: {r['latency_ms_b1']:6.2f} ms", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
