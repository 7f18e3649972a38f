"""What the benchmark scripts share, so that no benchmark imports another: the machine description every figure
is recorded with, running `resnetlab train` as a user would, the machine's measured ceilings, the engine's training
step timed, the seeds' per-item PIL dataset and memory readings."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image


def wrk(url: str, body: bytes, content_type: str, connections: int, seconds: float, threads: int = 2) -> dict:
    """POST `body` to `url` from `wrk` (Debian package; C, so the load generator takes little of the CPU it shares
    with the server): keep-alive connections, each sending the next request on answer. req/s, p50 and p99 in ms,
    non-2xx answers (failures) and wrk's socket errors."""
    import re
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "body")
        Path(path).write_bytes(body)
        lua = os.path.join(tmp, "post.lua")
        Path(lua).write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n'
                             f'local f = io.open("{path}", "rb")\nwrk.body = f:read("*all")\nf:close()\n')
        out = subprocess.run([shutil.which("wrk"), f"-t{min(threads, connections)}", f"-c{connections}",
                              f"-d{seconds:.0f}s", "--latency", "-s", lua, url], capture_output=True, text=True).stdout

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms(re.search(r"\s50%\s+(\S+)", out).group(1)), "p99": ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
            "failures": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(1) if errors else ""}


def rss_mb() -> float:
    """This process's resident memory in MB (VmRSS)."""
    return process_memory_mb()["rss_mb"]


def process_memory_mb(pid: int | str = "self") -> dict:
    """A process's resident memory in MB: all of it (VmRSS), and its anonymous (heaps, tensors, kernels) and
    file-backed (library code and data paged in) parts."""
    fields = {"VmRSS:": "rss_mb", "RssAnon:": "anon_mb", "RssFile:": "file_mb"}
    out = {v: float("nan") for v in fields.values()}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0] + ":"
            if key in fields:
                out[fields[key]] = int(line.split()[1]) / 1024
    return out


class PILCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array → PIL image → transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])




def median_step_seconds(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        amp: torch.dtype | None, warm: int = 3) -> float:
    """Median wall time of a training step (forward under autocast, cross-entropy, backward, foreach
    SGD step) over `batches`, the first `warm` steps not counted (allocation, kernel choice)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    model.train()
    times = []
    for i, (x, y) in enumerate(batches):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warm:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------- the machine and whole runs
HERE = Path(__file__).resolve().parent


def machine() -> dict:
    """This machine, as every benchmark records it beside its figures: CPU model, the instruction-set flags that
    decide kernel speed (bf16, VNNI, AMX), torch, threads, cores, date and GPU when there is one."""
    import torch
    from resnetlab.runtime import cpu_flags, cpu_model
    flags = sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma",
                                                 "avx512_vnni", "avx_vnni", "amx_int8"})
    info = {"cpu": cpu_model(), "flags": flags, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():  # the recipes' device: auto picks the GPU
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class RunFailed(RuntimeError):
    pass


def run(recipe: str, seed: int, out: Path, overrides: list[str] | tuple[str, ...] = (),
        env: dict | None = None) -> dict:
    """One `resnetlab train` in its own process (recipe, seed, KEY=VALUE overrides); its measured figures.
    Also used by sweep_quick.py, which runs several side by side (env: their thread counts)."""
    if (out / "results.json").exists() or (out / "last.safetensors").exists():
        shutil.rmtree(out)  # this benchmark's own folder from an earlier run: measure afresh
    cmd = [sys.executable, "-m", "resnetlab", "train", "--recipe", recipe, "--out", str(out), "--no-progress",
           f"train.seed={seed}", *overrides]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RunFailed(f"{recipe}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return {"recipe": recipe, "seed": seed, "overrides": list(overrides), "wall_s": wall,
            "test_top1": results["test"]["top1"], "train_s": 60 * results["train_time_min"],
            "train_pflop": results.get("train_pflop"), "checkpoint": str(out / "best.safetensors"),
            "epochs": [{"epoch": r["epoch"], "elapsed_s": r["elapsed_s"], "top1": r["val_top1"],
                        "split": r["eval_split"]} for r in rows if r["val_top1"] is not None]}


def machine_line(info: dict | None = None) -> str:
    """The machine in one line, for printed tables."""
    info = info or machine()
    return (f"{info['cpu']} ({', '.join(info['flags'])}), {info['cpus']} CPUs, torch {info['torch']}"
            + (f", {info['gpu']}" if info.get("gpu") else ""))


# ---------------------------------------------------------------- ceilings and the engine's step
def sync(device: torch.device) -> None:
    """CUDA work is asynchronous: a timer must wait for the device, not for the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceilings(device: torch.device, reps: int = 5) -> dict[str, float]:
    """This machine's ceilings, measured now: TFLOP/s of a ResNet-18-sized 3x3 convolution forward (128 -> 128
    channels, 16x16, batch 128, channels_last) in fp32 and under bf16 autocast, and of a 4096^3 matmul.
    On a GPU one such call lasts microseconds, so each timing there covers 50 calls between syncs."""
    out = {}
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device, memory_format=torch.channels_last)
    x = torch.randn(128, 128, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    conv_flop = 2 * 128 * 128 * 9 * 16 * 16 * 128
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    calls = 1 if device.type == "cpu" else 50
    for prec in ("fp32", "bf16"):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16")
        with torch.no_grad(), ctx:
            for name, fn, flop in (("conv", lambda: conv(x), conv_flop), ("matmul", lambda: a @ b, 2 * 4096 ** 3)):
                for _ in range(3 if device.type == "cuda" else 1):
                    fn()
                times = []
                for _ in range(reps):
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    sync(device)
                    times.append((time.perf_counter() - t0) / calls)
                out[f"{name}_{prec}"] = flop / min(times) / 1e12
    return out


def build_trainer(recipe, splits, device, amp, cl):
    """The engine's own Trainer for a recipe on these splits, outside any run folder (nothing is written)."""
    from resnetlab.models import CheckpointMeta, build_model
    from resnetlab.training.engine import RunContext, Trainer
    from resnetlab.training.runner import init_from_training_images, make_loaders
    torch.manual_seed(0)
    model = build_model(recipe.model.name, len(splits.classes), recipe.model.kwargs)
    init_from_training_images(model, splits, seed=0)
    loader = make_loaders(recipe, splits, device, cl)[0]
    meta = CheckpointMeta(arch=recipe.model.name, num_classes=len(splits.classes), classes=list(splits.classes),
                          mean=list(splits.mean), std=list(splits.std), input_size=32)
    ctx = RunContext(Path("/tmp/unused"), meta, device, amp, cl, progress=False)
    return Trainer(model, recipe, loader, None, ctx), loader


def time_steps(tr, loader, epoch: int, warm: int, steps: int) -> tuple[float, float]:
    """(seconds of the first `warm` steps, img/s of the next `steps`) for the epoch's image size."""
    loader.set_epoch(epoch)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(warm):
        tr.train_step(*next(it))[0].item()
    t1 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        loss, _ = tr.train_step(x, y)
        n += len(y)
    loss.item()
    return t1 - t0, n / (time.perf_counter() - t1)


# ---------------------------------------------------------------- held-out images of a checkpoint's run
def held_out(clf, data_dir: str | None, split: str):
    """The test split, or the validation images the checkpoint's own run held out of training — split by the
    runner's own load_splits from the recipe stored in the checkpoint: robustness read there can choose a recipe."""
    from resnetlab.data.cifar import load_cifar
    from resnetlab.training.config import recipe_from_dict
    from resnetlab.training.runner import load_splits
    root = data_dir or clf.metadata.data_ref.data_dir
    if split == "test":
        return load_cifar(root, "cifar10", "test")
    splits = load_splits(recipe_from_dict(clf.metadata.recipe).data, root, progress=False)
    if splits.val is None:
        raise SystemExit(f"{clf.path}: --split val, but its run held out no validation split (data.val_size=0); "
                         "use --split test or a checkpoint trained with data.val_size")
    return splits.val
