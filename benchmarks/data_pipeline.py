"""Data-layer figures: load time, memory, and batch-pipeline throughput against the
seeds' way (torchvision DataLoader + PIL transforms, 2 workers), measured in the same run.

    python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from _common import PILCifar, rss_mb
from resnetlab.data import AugmentConfig, BatchLoader, cifar10, resolve_data_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed-images", type=int, default=20000, help="images timed for the seeds' loader")
    args = ap.parse_args()
    root = resolve_data_root(args.data_dir)
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    base = rss_mb()
    t0 = time.perf_counter()
    train, test = cifar10(root, verify=True)
    out["load_s_verified"] = time.perf_counter() - t0
    out["rss_increase_mb"] = rss_mb() - base
    out["uint8_bytes_mb"] = (train.images.numel() + test.images.numel()) / 2**20
    t0 = time.perf_counter()
    cifar10(root, verify=False)
    out["load_s_unverified"] = time.perf_counter() - t0

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    loader = BatchLoader(train, 512, mean, std, train=True, augment=AugmentConfig(crop_padding=4, flip=True))
    for _ in zip(range(3), loader):
        pass
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    out["ours_img_s"] = n / (time.perf_counter() - t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    import torchvision.transforms as T
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    hwc = train.images.permute(0, 2, 3, 1).numpy()
    ds = PILCifar(hwc[: args.seed_images], train.labels.numpy()[: args.seed_images], tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=512, shuffle=True, num_workers=2)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in dl)
    out["seed_img_s"] = n / (time.perf_counter() - t0)
    out["ratio"] = out["ours_img_s"] / out["seed_img_s"]

    print(f"load CIFAR-10 (60k images, SHA-256 verified): {out['load_s_verified']:.2f} s "
          f"(unverified {out['load_s_unverified']:.2f} s)")
    print(f"memory: uint8 data {out['uint8_bytes_mb']:.0f} MiB, RSS grew {out['rss_increase_mb']:.0f} MiB on load, "
          f"peak RSS {out['peak_rss_mb']:.0f} MiB")
    print(f"batch pipeline (sample+crop+flip+normalise, batch 512): resnetlab {out['ours_img_s']:,.0f} img/s | "
          f"torchvision DataLoader+PIL (2 workers) {out['seed_img_s']:,.0f} img/s | ratio {out['ratio']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
