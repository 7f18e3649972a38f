"""Users' photos at scale: decoded-cache builds, training from the memory map, anonymous memory, linear probes.

Makes its own synthetic photo folders (640x480 JPEGs, a class-dependent colour field plus texture and
noise) under --work, then measures, each part on its own (run nothing else on the machine meanwhile):

  build   cache build img/s with 1 and 2 workers against the single-process decode loop the folder reader
          used before the cache (the same preprocessing), and the time a second load takes (cache hit)
  train   training img/s (BatchLoader + a ResNet step) reading the memory-mapped cache against the same
          split copied into an in-memory tensor, alternated in one process
  memory  peak anonymous memory (RssAnon of /proc, sampled every 20 ms) of `resnetlab train` from a folder
          whose decoded cache is several times that peak; with --old-src (a checkout's src/ of the code
          before the cache) the same runs with it, side by side
  probe   linear probe of a ResNet-50 at 224 px: the precomputed-features path (all epochs), the full-forward
          path (finetune.cached_features=false; --probe-full-epochs epochs measured, the rest extrapolated
          per epoch), and the seeds' way (torchvision ImageFolder + DataLoader, 2 workers, fp32; a number of
          batches measured, extrapolated per image)
  order   accuracy of the quasi-random order against a full shuffle: cifar10_quick on the bundled CIFAR-10
          (stored in a random order, as a cache is), chunks set to what 32 MB holds at --order-photo-size px
          (213 images at 224), --order-seeds seeds each; test top-1 of each run

    python benchmarks/data_scale.py --work /tmp/scale --parts build,train,memory,probe [--json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import machine

ROOT = Path(__file__).resolve().parents[1]
PALETTE = np.random.default_rng(7).integers(40, 215, size=(100, 3))


def _photo(args: tuple[Path, int, int, int]) -> None:
    path, label, seed, quality = args
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
    x = np.asarray(field, dtype=np.float32) * 0.5 + PALETTE[label] * 0.5
    x += rng.normal(0, 12, size=x.shape)
    cy, cx = rng.integers(60, 420), rng.integers(60, 580)
    x[cy - 40:cy + 40, cx - 40:cx + 40] = PALETTE[(label * 7 + 3) % 100]
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, quality=quality)


def make_photos(root: Path, n: int, classes: int, seed: int = 0) -> Path:
    """root/<class>/NNNNN.jpg, n photos in all (reused when already complete)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{n} {classes} {seed}":
        return root
    jobs = []
    for i in range(n):
        c = i % classes
        d = root / f"class_{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"{i:06d}.jpg", c, seed * 1_000_003 + i, 90))
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_photo, jobs, chunksize=64)
    done.write_text(f"{n} {classes} {seed}")
    return root


# ---------------------------------------------------------------------------------------------- build
def part_build(work: Path, n: int, size: int) -> dict:
    from resnetlab.data.cache import cache_dir, open_cache
    from resnetlab.data.folders import load_image_folder
    from resnetlab.data.sources import scan
    from resnetlab.decoding import ResizePolicy, load_uint8
    photos = make_photos(work / f"photos-{n}", n, 10)
    listing = scan(photos, cache_dir())
    out: dict = {"images": n, "size": size}
    for s in listing.samples:  # every variant reads the files from the page cache
        Path(s.file).read_bytes()
    t = time.perf_counter()
    arr = np.empty((n, 3, size, size), np.uint8)
    for i, s in enumerate(listing.samples):  # the loop the folder reader ran before the cache
        arr[i] = load_uint8(s.file, ResizePolicy(size))
    out["single_process_loop_img_s"] = n / (time.perf_counter() - t)
    del arr
    for w in (1, 2):
        root = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
        t = time.perf_counter()
        open_cache(listing, ResizePolicy(size), workers=w, progress=False, log=lambda *a: None, root=root)
        out[f"build_{w}_workers_img_s"] = n / (time.perf_counter() - t)
    os.environ["RESNETLAB_CACHE"] = str(root)
    t = time.perf_counter()
    load_image_folder(photos, size=size, progress=False, log=lambda *a: None)  # hit: scan, fingerprint, map
    out["second_load_s"] = time.perf_counter() - t
    return out


# ---------------------------------------------------------------------------------------------- train
def part_train(work: Path, n: int, size: int, steps: int, rounds: int) -> dict:
    from resnetlab.data import BatchLoader
    from resnetlab.data.folders import load_image_folder
    from resnetlab.models import build_model
    os.environ["RESNETLAB_CACHE"] = str(work / "cache-train")
    photos = make_photos(work / f"photos-{n}", n, 10)
    train, _ = load_image_folder(photos, size=size, progress=False, log=lambda *a: None)
    in_memory = train.materialize()
    torch.manual_seed(0)
    model = build_model("resnet18", 10, {}).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.bfloat16 if torch.backends.mkldnn.is_available() and _has_bf16() else None
    rates: dict[str, list[float]] = {"mmap": [], "memory": []}
    for r in range(rounds):
        for name, ds in (("mmap", train), ("memory", in_memory)):
            loader = BatchLoader(ds, 64, (0.5,) * 3, (0.25,) * 3, train=True, seed=r, channels_last=True)
            loader.set_epoch(r)
            it = iter(loader)
            seen, t = 0, None
            for s in range(steps + 2):
                x, y = next(it)
                if s == 2:
                    t, seen = time.perf_counter(), 0
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(y)
            rates[name].append(seen / (time.perf_counter() - t))
    m, mem = float(np.median(rates["mmap"])), float(np.median(rates["memory"]))
    return {"images": len(train), "size": size, "model": "resnet18", "batch": 64, "bf16": amp is not None,
            "mmap_img_s": m, "memory_img_s": mem, "ratio": m / mem, "rounds": rates}


def _has_bf16() -> bool:
    from resnetlab.runtime import cpu_has_fast_bf16
    return cpu_has_fast_bf16()


# --------------------------------------------------------------------------------------------- memory
def peak_anon(cmd: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit code, peak RssAnon MB, wall s, last output lines) of a command, sampled every 20 ms."""
    t = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    log.seek(0)
    tail = "".join(log.readlines()[-3:])
    return p.returncode, peak / 1024, time.perf_counter() - t, tail


def part_memory(work: Path, counts: list[int], size: int, old_src: str | None) -> list[dict]:
    rows = []
    for n in counts:
        photos = make_photos(work / f"photos-{n}", n, 10)
        for label, src in (("cache", str(ROOT / "src")), ("before", old_src)):
            if src is None:
                continue
            env = dict(os.environ, PYTHONPATH=src, RESNETLAB_CACHE=str(work / "cache-memory"))
            out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
            cmd = [sys.executable, "-m", "resnetlab", "train", "--out", str(out / "r"), "--no-progress",
                   "model.name=resnet20", "data.dataset=folder", f"data.path={photos}", f"data.image_size={size}",
                   "train.max_steps=1", "train.epochs=1", "train.eval_batch_size=256"]
            if label == "cache":  # the build is its own step (`data cache`); the training run then reads it
                subprocess.run([sys.executable, "-m", "resnetlab", "data", "cache", str(photos), "--image-size",
                                str(size), "--no-progress"], env=env, check=True, capture_output=True)
            rc, peak, wall, tail = peak_anon(cmd, env)
            rows.append({"images": n, "size": size, "decoded_mb": n * 3 * size * size / 2**20, "code": label,
                         "peak_rss_anon_mb": peak, "wall_s": wall, "rc": rc, "tail": tail.strip()[-300:]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- probe
def part_probe(work: Path, n: int, epochs: int, full_epochs: int, seeds_batches: int) -> dict:
    import torchvision
    photos = make_photos(work / f"photos-{n}", n, 10)
    weights = work / "resnet50-random.pth"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet50().state_dict(), weights)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), RESNETLAB_CACHE=str(work / "cache-probe"))
    subprocess.run([sys.executable, "-m", "resnetlab", "data", "cache", str(photos), "--image-size", "224",
                    "--no-progress"], env=env, check=True, capture_output=True)
    out: dict = {"images": n, "epochs": epochs, "model": "resnet50 (torchvision layout)", "size": 224}

    def run(tag: str, ep: int, cached: bool) -> dict:
        d = Path(tempfile.mkdtemp(dir=work, prefix=f"probe-{tag}-"))
        cmd = [sys.executable, "-m", "resnetlab", "finetune", "--weights", str(weights), "--data", str(photos),
               "--strategy", "linear-probe", "--image-size", "224", "--arch", "resnet50", "--out", str(d / "r"), "--no-progress",
               f"train.epochs={ep}", f"finetune.cached_features={'true' if cached else 'false'}",
               "train.batch_size=64", "train.eval_batch_size=64", "train.early_stopping.patience=0"]
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode:
            raise SystemExit(f"{tag}: finetune failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        res = json.loads((d / "r" / "linear-probe-results.json").read_text())
        return {"wall_s": wall, "train_time_min": res["train_time_min"], "top1": res["test"]["top1"]}

    out["precomputed"] = run("cached", epochs, True)
    full = run("full", full_epochs, False)
    # start-up and the final test evaluation are paid once; each further epoch costs what a measured one did
    per_epoch = full["train_time_min"] * 60 / full_epochs
    full["extrapolated_wall_s"] = full["wall_s"] + per_epoch * (epochs - full_epochs)
    out["full_forward"] = full
    out["seeds_way"] = seeds_way(photos, seeds_batches, epochs)
    base = out["full_forward"]["extrapolated_wall_s"]
    out["speedup_vs_full_forward"] = base / out["precomputed"]["wall_s"]
    out["speedup_vs_seeds_way"] = out["seeds_way"]["extrapolated_wall_s"] / out["precomputed"]["wall_s"]
    # the floor of any path: one backbone forward per image; today's path makes `epochs` of them per
    # training and validation image, plus one per test image
    n_test = round(n * 0.2)
    out["forward_ratio_bound"] = (epochs * (n - n_test) + n_test) / n
    return out


def seeds_way(photos: Path, batches: int, epochs: int) -> dict:
    """torchvision ImageFolder + DataLoader(2 workers), ResNet-50 frozen but for its fc, fp32: img/s."""
    import torchvision
    from torchvision import transforms as T
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(str(photos), tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
    model = torchvision.models.resnet50()
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc = torch.nn.Linear(2048, 10)
    model.eval()
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)
    seen, t = 0, None
    for b, (x, y) in enumerate(dl):
        if b == 2:
            t, seen = time.perf_counter(), 0
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if b >= batches + 1:
            break
    rate = seen / (time.perf_counter() - t)
    train_images = int(len(ds) * 0.8 * 0.9)
    return {"img_s": rate, "measured_images": seen, "extrapolated_wall_s": train_images * epochs / rate}


# ---------------------------------------------------------------------------------------------- order
def part_order(work: Path, photo_size: int, seeds: list[int], data_dir: str | None) -> list[dict]:
    import resnetlab
    import resnetlab.data.loader as loader
    loader.CHUNK_BYTES = (32 << 20) // (3 * photo_size * photo_size) * 3 * 32 * 32
    rows = []
    for seed in seeds:
        for order in ("random", "quasi-random"):
            out = Path(tempfile.mkdtemp(dir=work, prefix=f"order-{order}-"))
            r = resnetlab.train("cifar10_quick", out / "r", data_dir,
                                overrides={"data.order": order, "train.seed": seed}, progress=False,
                                log=lambda *a: None)
            rows.append({"order": order, "seed": seed, "top1": r["test"]["top1"],
                         "chunk_images": loader.CHUNK_BYTES // 3072, "window_chunks": loader.WINDOW_CHUNKS,
                         "train_time_min": r["train_time_min"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "resnetlab-data-scale")
    ap.add_argument("--parts", default="build,train,memory,probe")
    ap.add_argument("--build-images", type=int, default=1000)
    ap.add_argument("--build-size", type=int, default=224)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--train-size", type=int, default=112)
    ap.add_argument("--train-steps", type=int, default=15)
    ap.add_argument("--train-rounds", type=int, default=3)
    ap.add_argument("--memory-images", default="2000,8000")
    ap.add_argument("--memory-size", type=int, default=160)
    ap.add_argument("--old-src", help="src/ of a checkout before the cache, measured beside it (memory)")
    ap.add_argument("--probe-images", type=int, default=5000)
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--probe-full-epochs", type=int, default=1)
    ap.add_argument("--seeds-batches", type=int, default=20)
    ap.add_argument("--order-photo-size", type=int, default=224)
    ap.add_argument("--order-seeds", default="0")
    ap.add_argument("--data-dir", help="CIFAR-10 root for the order part (default: $RESNETLAB_DATA)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))
    res: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}  # _common.machine: the one description
    parts = a.parts.split(",")
    if "build" in parts:
        res["build"] = part_build(a.work, a.build_images, a.build_size)
        print(json.dumps({"build": res["build"]}), flush=True)
    if "train" in parts:
        res["train"] = part_train(a.work, a.train_images, a.train_size, a.train_steps, a.train_rounds)
        print(json.dumps({"train": res["train"]}), flush=True)
    if "memory" in parts:
        res["memory"] = part_memory(a.work, [int(x) for x in a.memory_images.split(",")], a.memory_size, a.old_src)
    if "probe" in parts:
        res["probe"] = part_probe(a.work, a.probe_images, a.probe_epochs, a.probe_full_epochs, a.seeds_batches)
        print(json.dumps({"probe": res["probe"]}), flush=True)
    if "order" in parts:
        res["order"] = part_order(a.work, a.order_photo_size, [int(x) for x in a.order_seeds.split(",")], a.data_dir)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
